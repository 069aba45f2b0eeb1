//! This cluster's own state, as its source tells it: Kubernetes (watchers) or, standalone, a directory
//! of YAML files in the same shapes. Both sources produce a [`LocalState`]; everything downstream (identity
//! resolution, publishing, the dataplane snapshot) reads only that.
//!
//! [`Kind`] lists the kinds read and where the API serves each. [`object`] is the shared step from a
//! Kubernetes object to its part of the state (with [`cilium`], `netpol`, `service` and `workload`
//! doing the translation per kind, `selector` and `ports` the parts policies share). [`yaml`] reads
//! files and decodes objects; [`YamlSource`] follows a directory of them and `KubeSource` (feature
//! `kubernetes`: the kube client is built only into what uses it) the API server. Both hand out a
//! [`LocalSourceHandle`]: the state on a watch channel, and a [`SourceStatus`] with every problem in
//! force.

pub mod cilium;
mod error;
mod kind;
#[cfg(feature = "kubernetes")]
mod kube_mirror;
#[cfg(feature = "kubernetes")]
mod kube_source;
mod model;
mod netpol;
pub mod object;
mod ports;
mod refused;
mod selector;
mod service;
mod status;
mod workload;
pub mod yaml;
mod yaml_source;

pub use cilium::CiliumNetworkPolicy;
pub use error::TranslateError;
pub use kind::Kind;
#[cfg(feature = "kubernetes")]
pub use kube_source::{kube_client, KubeClientError, KubeSource, KubeSourceOptions, WATCHED};
pub use model::*;
pub use object::{KubeObject, LocalObject, ObjectKey};
pub use refused::{Coverage, UnsupportedPolicy};
pub use status::{ApiServerHealth, LocalSourceHandle, SourceError, SourceStatus};
pub use yaml_source::{YamlSource, YamlSourceError};
