//! A leaf every module imports: how an error and its sources read on one line ([`Chain`],
//! [`chain`]).
//!
//! It knows no other module's error, so it sits at the bottom of the module graph; the aggregate
//! error and the exit codes live in `main`.

use std::fmt;

/// Shows an error and its sources joined with ": ", for one log field or one line of output:
/// `error = %Chain(&e)`.
///
/// A source whose text the line already shows is skipped (its own sources are still shown):
/// some libraries (kube's `ServiceError: {0}`) print their source in their own message too, and
/// the operator should read each cause once.
#[derive(Clone, Copy)]
pub struct Chain<'a>(pub &'a dyn std::error::Error);

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.to_string();
        f.write_str(&shown)?;
        let mut cur = self.0.source();
        while let Some(cause) = cur {
            let text = cause.to_string();
            if !text.is_empty() && !shown.contains(&text) {
                f.write_str(": ")?;
                f.write_str(&text)?;
                shown = text;
            }
            cur = cause.source();
        }
        Ok(())
    }
}

impl fmt::Debug for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// [`Chain`] as a `String`. Every module logs errors through this (or [`Chain`]), so a chain
/// reads the same everywhere.
pub fn chain(e: &dyn std::error::Error) -> String {
    Chain(e).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error with a message and an optional source.
    #[derive(Debug)]
    struct E(&'static str, Option<Box<E>>);

    impl fmt::Display for E {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for E {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as &dyn std::error::Error)
        }
    }

    fn e(msg: &'static str, source: Option<E>) -> E {
        E(msg, source.map(Box::new))
    }

    #[test]
    fn a_chain_joins_each_cause_with_a_colon() {
        let err = e(
            "failed to read Lease kube-system/endpoint-copier",
            Some(e("connection refused", None)),
        );
        assert_eq!(
            chain(&err),
            "failed to read Lease kube-system/endpoint-copier: connection refused"
        );
    }

    #[test]
    fn a_cause_the_message_already_shows_is_not_repeated() {
        // kube: `ServiceError: {0}` over hyper-util's "client error (Connect)" over the OS error.
        let err = e(
            "ServiceError: client error (Connect)",
            Some(e(
                "client error (Connect)",
                Some(e("Connection refused (os error 111)", None)),
            )),
        );
        assert_eq!(
            chain(&err),
            "ServiceError: client error (Connect): Connection refused (os error 111)"
        );
    }

    #[test]
    fn chain_and_the_display_adapter_agree() {
        let err = e("a", Some(e("b", None)));
        assert_eq!(Chain(&err).to_string(), chain(&err));
        assert_eq!(format!("{:?}", Chain(&err)), "a: b");
    }
}
