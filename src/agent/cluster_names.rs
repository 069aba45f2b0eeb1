//! One shared copy of each cluster's name, for the directories that tag every remote row with one
//! (100k rows, a handful of clusters).

use std::sync::Arc;

#[derive(Default)]
pub struct ClusterNames(Vec<Arc<str>>);

impl ClusterNames {
    /// The shared copy of `name`, made the first time it is asked for.
    pub fn shared(&mut self, name: &str) -> Arc<str> {
        if let Some(known) = self.0.iter().find(|c| &***c == name) {
            return known.clone();
        }
        let new: Arc<str> = name.into();
        self.0.push(new.clone());
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_asked_twice_is_one_copy() {
        let mut names = ClusterNames::default();
        let a = names.shared("cluster2");
        let b = names.shared("cluster3");
        assert!(Arc::ptr_eq(&a, &names.shared("cluster2")));
        assert!(!Arc::ptr_eq(&a, &b));
        assert_eq!(&*b, "cluster3");
    }
}
