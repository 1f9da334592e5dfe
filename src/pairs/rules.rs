//! [`Rules`]: which pairs exist, decided one way by every caller, and what a resolved pair
//! probes with and whether it derives a family, looked up by target.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;

use super::{Origin, Pair, Resolution, annotated_probe, resolve};
use crate::names::{ANNOTATION_ENABLED, ANNOTATION_PROBE, ServiceRef};
use crate::source::Source;

/// Which pairs exist, decided one way everywhere (the engine, `check`, `status`, `drain`): the
/// configured pairs and the annotation rules, built once from the config. A resolved pair's
/// probe and whether it derives a family are looked up here too, by target.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// The `[[pair]]` tables, in config order.
    configured: Vec<crate::config::PairConfig>,
    /// Each configured pair's index in `configured`, by target (a target configured twice is
    /// refused by [`resolve`], so no resolved pair looks up the wrong one).
    by_target: BTreeMap<ServiceRef, usize>,
    /// `[annotations] enabled`.
    annotations_enabled: bool,
    /// `[annotations] allowed_sources`.
    allowed_sources: Vec<ServiceRef>,
}

impl Rules {
    /// The rules of `config`.
    pub fn of(config: &crate::config::Config) -> Rules {
        Rules::new(
            config.pairs.clone(),
            config.annotations.enabled,
            config.annotations.allowed_sources.clone(),
        )
    }

    /// The rules of these configured pairs and annotation settings.
    pub fn new(
        configured: Vec<crate::config::PairConfig>,
        annotations_enabled: bool,
        allowed_sources: Vec<ServiceRef>,
    ) -> Rules {
        let mut by_target = BTreeMap::new();
        for (i, p) in configured.iter().enumerate() {
            by_target.entry(p.target.clone()).or_insert(i);
        }
        Rules {
            configured,
            by_target,
            annotations_enabled,
            allowed_sources,
        }
    }

    /// The configured pairs, in config order.
    pub fn configured(&self) -> &[crate::config::PairConfig] {
        &self.configured
    }

    /// Whether annotated pairs are mirrored (`[annotations] enabled`).
    pub fn annotations_enabled(&self) -> bool {
        self.annotations_enabled
    }

    /// Whether `target` is a configured pair's target (its probes carry the node's credentials).
    pub fn is_configured(&self, target: &ServiceRef) -> bool {
        self.by_target.contains_key(target)
    }

    /// Whether the Service `svc`, named `name`, can take part in a pair: a configured target,
    /// or annotated. The Service caches and the one-shot reads keep only those.
    pub fn concerns(&self, name: &ServiceRef, svc: &Service) -> bool {
        self.is_configured(name)
            || svc
                .metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(ANNOTATION_ENABLED))
    }

    /// The pairs and refusals given the Services known now.
    pub fn resolve(&self, services: &BTreeMap<ServiceRef, Service>) -> Resolution {
        let configured: Vec<(Vec<Source>, ServiceRef)> = self
            .configured
            .iter()
            .map(|p| (p.sources.clone(), p.target.clone()))
            .collect();
        resolve(
            &configured,
            self.annotations_enabled,
            &self.allowed_sources,
            services,
        )
    }

    /// The `[[pair]]` behind a configured `pair`.
    fn config_of(&self, pair: &Pair) -> Option<&crate::config::PairConfig> {
        let p = self.configured.get(*self.by_target.get(&pair.target)?)?;
        (p.sources == pair.sources).then_some(p)
    }

    /// What an active `pair` probes its endpoints with: a config pair's `probe` key, an
    /// annotated pair's `endpoint-copier/probe` annotation (validated by [`super::annotated_pair`]: a
    /// bad value, or one asking for more than an annotation may, refuses the pair), or, when
    /// neither says, [`crate::probe::spec::default_for`] its source. The engine probes an
    /// annotated pair's targets without credentials unless the host's config probes the same
    /// targets.
    pub fn probe_of(
        &self,
        pair: &Pair,
        services: &BTreeMap<ServiceRef, Service>,
    ) -> Option<crate::probe::Spec> {
        match pair.origin {
            Origin::Config => self.config_of(pair).and_then(|p| p.probe.clone()),
            Origin::Annotation => {
                let service = services.get(&pair.target);
                let annotated = service
                    .and_then(|s| s.metadata.annotations.as_ref())
                    .and_then(|a| a.get(ANNOTATION_PROBE));
                match (service, annotated) {
                    (Some(service), Some(text)) => annotated_probe(service, text).ok().flatten(),
                    _ => crate::probe::spec::default_for_sources(&pair.sources),
                }
            }
        }
    }

    /// Whether `pair` derives a family its target serves but its source lacks from the Nodes:
    /// the configured `derive_families` for a configured pair; for an annotated pair the
    /// default ([`crate::config::derive_families_default`]: only a source `default/kubernetes`).
    pub fn derives(&self, pair: &Pair) -> bool {
        match pair.origin {
            Origin::Config => self.config_of(pair).is_some_and(|p| p.derive_families),
            Origin::Annotation => crate::config::derive_families_default(&pair.sources),
        }
    }
}
