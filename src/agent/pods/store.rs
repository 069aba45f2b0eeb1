//! The pods the CNI plugin attached, remembered in `state-dir/pods/`, one file per container
//! interface, so that a restarted agent attaches them again. Each file is written whole under a
//! temporary name and renamed into place: a crash leaves the old record or the new one, never half.

use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use meshpath_api::cni::{ContainerRef, MacAddr, PodAttachment, PodName};
use serde::{Deserialize, Serialize};

/// What an attached pod is: enough to attach it again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    pub container: ContainerRef,
    pub pod: PodName,
    pub host_interface: String,
    pub mac: MacAddr,
    pub addresses: Vec<IpAddr>,
}

impl From<PodAttachment> for PodRecord {
    fn from(a: PodAttachment) -> Self {
        PodRecord {
            container: a.container,
            pod: a.pod,
            host_interface: a.host_interface,
            mac: a.mac,
            addresses: a.addresses,
        }
    }
}

/// The directory of records.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(state_dir: &Path) -> Store {
        Store {
            dir: state_dir.join("pods"),
        }
    }

    /// Every record that reads; one that does not is logged and removed (it can attach nothing).
    pub fn load(&self) -> Vec<PodRecord> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut records = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let read = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<PodRecord>(&b).map_err(|e| e.to_string()));
            match read {
                Ok(record) => records.push(record),
                Err(error) => {
                    tracing::warn!(file = %path.display(), %error, "pod record unreadable; removed");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        records.sort_by(|a, b| a.container.cmp(&b.container));
        records
    }

    pub fn save(&self, record: &PodRecord) -> io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let path = self.path(&record.container);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(record)?)?;
        std::fs::rename(&tmp, &path)
    }

    pub fn remove(&self, container: &ContainerRef) -> io::Result<()> {
        match std::fs::remove_file(self.path(container)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    /// The file of a container interface: its id and interface name, hex-encoded so that no name a
    /// runtime passes can reach outside the directory.
    fn path(&self, container: &ContainerRef) -> PathBuf {
        let name: String = format!("{}\0{}", container.container_id, container.ifname)
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect();
        self.dir.join(format!("{name}.json"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> PodRecord {
        PodRecord {
            container: ContainerRef {
                container_id: id.into(),
                ifname: "eth0".into(),
            },
            pod: PodName {
                namespace: "default".into(),
                name: "x-wing".into(),
            },
            host_interface: "lxc0123456789ab".into(),
            mac: MacAddr([2, 0, 0, 0, 0, 1]),
            addresses: vec!["100.64.1.10".parse().unwrap()],
        }
    }

    #[test]
    fn records_come_back_and_go() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        assert!(store.load().is_empty(), "no directory yet");
        store.save(&record("b")).unwrap();
        store.save(&record("../../a")).unwrap();
        assert_eq!(store.load(), vec![record("../../a"), record("b")]);
        assert_eq!(
            std::fs::read_dir(dir.path().join("pods")).unwrap().count(),
            2
        );
        store.remove(&record("b").container).unwrap();
        store.remove(&record("b").container).unwrap();
        assert_eq!(store.load(), vec![record("../../a")]);
    }

    #[test]
    fn a_torn_or_foreign_file_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        store.save(&record("a")).unwrap();
        std::fs::write(dir.path().join("pods/junk.json"), b"{\"container\":").unwrap();
        std::fs::write(dir.path().join("pods/x.tmp"), b"half").unwrap();
        assert_eq!(store.load(), vec![record("a")]);
        assert_eq!(
            std::fs::read_dir(dir.path().join("pods")).unwrap().count(),
            1
        );
    }
}
