//! This cluster's own state, as its source tells it: Kubernetes (watchers) or, standalone, a directory
//! of YAML files in the same shapes. Both sources produce a [`LocalState`]; everything downstream (identity
//! resolution, publishing, the dataplane snapshot) reads only that.

mod model;

pub use model::*;
