//! The standalone source on a real directory: files added, changed, broken, fixed and removed while
//! it runs, each step observed on the state and status channels.

use std::path::Path;
use std::time::Duration;

use meshpath_control::local::{LocalSourceHandle, ObjectRef, SourceError, YamlSource};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

fn pod(name: &str, ip: &str, app: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\n  labels:\n    app: {app}\nspec:\n  nodeName: c1-n1\n  containers: []\nstatus:\n  phase: Running\n  podIPs:\n  - ip: {ip}\n"
    )
}

const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: default\n  annotations:\n    service.cilium.io/global: \"true\"\nspec:\n  clusterIP: 100.64.255.10\n  ports:\n  - port: 80\n";

fn write(dir: &Path, name: &str, text: &str) {
    // Written beside and renamed in, as editors and kubectl cp do, so the source never reads half a file.
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

async fn until<T: Clone>(rx: &mut watch::Receiver<T>, what: &str, ok: impl FnMut(&T) -> bool) -> T {
    match tokio::time::timeout(WAIT, rx.wait_for(ok)).await {
        Ok(Ok(v)) => v.clone(),
        _ => panic!("timed out waiting for {what}"),
    }
}

fn at(name: &str) -> ObjectRef {
    ObjectRef {
        namespace: "default".into(),
        name: name.into(),
    }
}

#[tokio::test]
async fn directory_edits_follow_through_to_the_state() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "pods.yaml",
        &format!(
            "{}---\n{}",
            pod("a", "100.64.1.10", "web"),
            pod("b", "100.64.1.11", "db")
        ),
    );
    std::fs::write(dir.path().join("README.md"), "not a state file").unwrap();
    let cancel = CancellationToken::new();
    let LocalSourceHandle {
        mut state,
        mut status,
        task,
    } = YamlSource::spawn(dir.path(), cancel.clone()).unwrap();

    // The first state is there as soon as spawn returns.
    assert_eq!(state.borrow().pods.len(), 2);
    assert!(status.borrow().synced && status.borrow().errors.is_empty());

    // Add a file.
    write(dir.path(), "service.yaml", SERVICE);
    let s = until(&mut state, "the service", |s| {
        s.services.contains_key(&at("web"))
    })
    .await;
    assert!(s.services[&at("web")].global);

    // Change a file: pod b relabelled, pod a gone.
    write(dir.path(), "pods.yaml", &pod("b", "100.64.1.11", "cache"));
    let s = until(&mut state, "pods.yaml changed", |s| s.pods.len() == 1).await;
    assert_eq!(s.pods[&at("b")].labels["app"], "cache");

    // Break it: the last good content stays, the error names the file and the line.
    write(
        dir.path(),
        "pods.yaml",
        &format!(
            "{}---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: c\nstatus:\n  podIPs: 7\n",
            pod("b", "100.64.1.11", "cache")
        ),
    );
    let st = until(&mut status, "the error", |s| !s.errors.is_empty()).await;
    let SourceError::File {
        path,
        line,
        problem,
    } = &st.errors[0]
    else {
        panic!("{:?}", st.errors)
    };
    assert_eq!(path, &dir.path().join("pods.yaml"));
    assert_eq!(*line, 21, "{problem}");
    assert_eq!(problem, "expected sequence start (column 11)");
    assert_eq!(state.borrow().pods.len(), 1);
    assert_eq!(state.borrow().pods[&at("b")].labels["app"], "cache");
    assert!(
        state.borrow().services.contains_key(&at("web")),
        "other files are unaffected"
    );

    // A policy that cannot be translated breaks no file: it is taken, refused, denying what it covers.
    write(dir.path(), "policy.yaml", "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: np\nspec:\n  podSelector: {}\n  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/8}\n");
    let s = until(&mut state, "the refused policy", |s| !s.policies.is_empty()).await;
    let why = s.policies.values().next().unwrap().refused.clone().unwrap();
    assert!(
        why.starts_with("NetworkPolicy default/np: `spec.ingress[0].from[0].ipBlock`"),
        "{why}"
    );
    assert_eq!(status.borrow().errors.len(), 1, "only pods.yaml's");

    // Fix both.
    write(
        dir.path(),
        "pods.yaml",
        &format!(
            "{}---\n{}",
            pod("b", "100.64.1.11", "cache"),
            pod("c", "100.64.1.12", "web")
        ),
    );
    write(dir.path(), "policy.yaml", "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: np\nspec:\n  podSelector: {}\n");
    until(&mut status, "no errors", |s| s.errors.is_empty()).await;
    let s = until(&mut state, "the fixed files", |s| {
        s.pods.len() == 2 && s.policies.values().all(|p| p.refused.is_none())
    })
    .await;
    assert_eq!(s.policies.len(), 1);
    assert!(s.pods.contains_key(&at("c")));

    // Delete a file.
    std::fs::remove_file(dir.path().join("service.yaml")).unwrap();
    until(&mut state, "the service gone", |s| s.services.is_empty()).await;

    cancel.cancel();
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_file_broken_from_the_start_contributes_nothing_and_a_missing_directory_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", SERVICE);
    write(
        dir.path(),
        "b.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\n",
    );
    let handle = YamlSource::spawn(dir.path(), CancellationToken::new()).unwrap();
    assert_eq!(handle.state.borrow().services.len(), 1);
    let errors = handle.status.borrow().errors.clone();
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0]
            .to_string()
            .contains("b.yaml:1: unsupported kind `Deployment`"),
        "{}",
        errors[0]
    );

    // The same object in two files: the later file's definition is in force, and reported.
    let mut status = handle.status.clone();
    let mut state = handle.state.clone();
    write(
        dir.path(),
        "c.yaml",
        &SERVICE.replace("100.64.255.10", "100.64.255.99"),
    );
    let st = until(&mut status, "the redefinition", |s| s.errors.len() == 2).await;
    let text = st.errors[1].to_string();
    assert!(text.ends_with("c.yaml:1: Service default/web is also defined at a.yaml:1; this later definition is in force".replace("a.yaml", &dir.path().join("a.yaml").display().to_string()).as_str()), "{text}");
    let s = until(&mut state, "the later definition", |s| {
        s.services
            .values()
            .any(|v| v.cluster_ips[0].to_string() == "100.64.255.99")
    })
    .await;
    assert_eq!(s.services.len(), 1);

    let missing = dir.path().join("nope");
    let err = YamlSource::spawn(&missing, CancellationToken::new()).unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
}
