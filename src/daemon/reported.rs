//! The one "report on change" memory: every fact the engine tells people about (an Event, a
//! warning, a metric) is said when it changes, not on every plan. Each note site keeps a
//! [`Reported`] of what it last said and asks it whether the new value is news.

/// What was last said of one fact.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reported<T>(T);

impl<T: PartialEq> Reported<T> {
    /// Nothing said yet; `initial` counts as said (no news until something else comes).
    pub fn new(initial: T) -> Reported<T> {
        Reported(initial)
    }

    /// Records `now` as said. Returns what it replaces when it is news, `None` when it is what
    /// was last said (nothing to say).
    pub fn change(&mut self, now: T) -> Option<T> {
        if self.0 == now {
            return None;
        }
        Some(std::mem::replace(&mut self.0, now))
    }

    /// What was last said.
    pub fn last(&self) -> &T {
        &self.0
    }
}

impl<T: Default + PartialEq> Reported<T> {
    /// Forgets what was said: the next value is news unless it is the default (a new leadership
    /// term reports the standing facts again).
    pub fn forget(&mut self) {
        self.0 = T::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_change_is_news_and_it_hands_back_what_was_said_before() {
        let mut said: Reported<Option<&str>> = Reported::default();
        assert_eq!(said.change(None), None, "the default is nothing to say");
        assert_eq!(said.change(Some("down")), Some(None));
        assert_eq!(said.change(Some("down")), None);
        assert_eq!(said.change(Some("up")), Some(Some("down")));
        assert_eq!(said.last(), &Some("up"));
        said.forget();
        assert_eq!(said.change(Some("up")), Some(None), "forgotten: said again");
    }
}
