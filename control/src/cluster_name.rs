//! A cluster's name as the mesh spells it: the segment of every kvstore key a cluster writes, and the
//! file name of a remote's ClusterMesh configuration.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// At most 32 of `[a-z0-9-]`, not empty (Cilium's rule).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClusterName(String);

/// A string that is not a valid cluster name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a cluster name (1 to 32 of a-z, 0-9 and -)")]
pub struct ClusterNameError(pub String);

impl ClusterName {
    pub const MAX_LEN: usize = 32;

    pub fn new(name: &str) -> Result<Self, ClusterNameError> {
        let valid_char = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-';
        if name.is_empty() || name.len() > Self::MAX_LEN || !name.bytes().all(valid_char) {
            return Err(ClusterNameError(name.to_owned()));
        }
        Ok(ClusterName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ClusterName {
    type Err = ClusterNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ClusterName::new(s)
    }
}

impl fmt::Display for ClusterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for ClusterName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ClusterName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ClusterName::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_lab_names_and_refuses_others() {
        assert!(ClusterName::new("cluster2").is_ok());
        assert!(ClusterName::new("eu-west-1").is_ok());
        assert!(ClusterName::new("").is_err());
        assert!(ClusterName::new("Cluster2").is_err());
        assert!(ClusterName::new("a/b").is_err());
        assert!(ClusterName::new(&"a".repeat(33)).is_err());
    }

    proptest! {
        #[test]
        fn valid_names_round_trip(name in "[a-z0-9-]{1,32}") {
            let parsed = ClusterName::new(&name).unwrap();
            prop_assert_eq!(parsed.as_str(), name.as_str());
        }

        #[test]
        fn never_panics(name in ".{0,40}") {
            let _ = ClusterName::new(&name);
        }
    }
}
