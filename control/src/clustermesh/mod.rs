//! ClusterMesh: the remote clusters this agent watches. [`config`] reads the directory of remote
//! files, [`config_watch`] follows it, [`remote`] runs one watcher task per remote cluster over its etcd,
//! [`mesh`] keeps the set of watchers equal to the configuration, and [`status`] reports each remote as `cilium-dbg status` does.

pub mod config;
pub mod config_watch;
pub mod limits;
pub mod mesh;
pub mod mirror;
pub mod remote;
mod session;
pub mod status;

pub use limits::{RemoteLimits, Usage};
pub use mesh::{run_clustermesh, run_clustermesh_from, ClusterMesh};
pub use remote::{
    spawn_remote, IdClaims, RemoteError, RemoteEvent, RemoteHandle, RemoteOptions, StatusBoard,
};
pub use session::decode_remote_entry;
pub use status::{render as render_status, CidrConflict, MeshStatus, RemoteStatus, SyncStatus};
