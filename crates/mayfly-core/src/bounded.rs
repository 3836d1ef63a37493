//! A map of at most a fixed number of values, shared between threads; when full, it starts
//! afresh. For values that are cheap to make again (kept decisions, kept reads): forgetting them
//! all at once costs one miss each and needs no order to be tracked.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

#[derive(Debug)]
pub struct Bounded<K, V> {
    values: Mutex<HashMap<K, V>>,
    limit: usize,
}

impl<K: Eq + Hash, V: Clone> Bounded<K, V> {
    pub fn new(limit: usize) -> Bounded<K, V> {
        Bounded {
            values: Mutex::new(HashMap::new()),
            limit,
        }
    }

    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.values.lock().ok()?.get(key).cloned()
    }

    pub fn put(&self, key: K, value: V) {
        if let Ok(mut values) = self.values.lock() {
            if values.len() >= self.limit {
                values.clear();
            }
            values.insert(key, value);
        }
    }

    pub fn len(&self) -> usize {
        self.values.lock().map_or(0, |values| values.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_afresh_when_full() {
        let kept = Bounded::new(2);
        kept.put("a", 1);
        kept.put("b", 2);
        assert_eq!(
            (kept.get("a"), kept.get("b"), kept.len()),
            (Some(1), Some(2), 2)
        );
        kept.put("c", 3);
        assert_eq!(
            (kept.get("a"), kept.get("c"), kept.len()),
            (None, Some(3), 1)
        );
    }
}
