//! Services and EndpointSlices → [`LocalService`] and [`LocalEndpointSlice`], with Cilium's global
//! service annotations read into flags.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::error::{Subject, TranslateError};
use super::model::{
    Affinity, LocalEndpointSlice, LocalService, LocalServicePort, ObjectRef, SliceEndpoint,
};
use super::workload::ip;

const GLOBAL: &str = "service.cilium.io/global";
const GLOBAL_LEGACY: &str = "io.cilium/global-service";
const SHARED: &str = "service.cilium.io/shared";
const AFFINITY: &str = "service.cilium.io/affinity";
/// The label naming the Service an EndpointSlice belongs to.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

pub(crate) fn service(
    svc: &Service,
    at: ObjectRef,
    subject: &Subject,
) -> Result<LocalService, TranslateError> {
    let spec = svc.spec.clone().unwrap_or_default();
    let annotations = svc.metadata.annotations.clone().unwrap_or_default();
    let cluster_ips = match spec.cluster_ips.filter(|v| !v.is_empty()) {
        Some(ips) => ips,
        None => spec.cluster_ip.into_iter().collect(),
    };
    let cluster_ips = cluster_ips
        .iter()
        .enumerate()
        .filter(|(_, text)| !text.is_empty() && *text != "None")
        .map(|(i, text)| ip(text, subject, &format!("spec.clusterIPs[{i}]")))
        .collect::<Result<_, _>>()?;
    let ports = spec
        .ports
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, p)| {
            let field = format!("spec.ports[{i}]");
            service_port(
                p.name.as_deref(),
                p.protocol.as_deref(),
                Some(p.port),
                subject,
                &field,
            )
        })
        .collect::<Result<_, _>>()?;
    Ok(LocalService {
        service: at,
        cluster_ips,
        ports,
        selector: spec.selector.unwrap_or_default(),
        global: flag(&annotations, GLOBAL, subject)?.or(flag(
            &annotations,
            GLOBAL_LEGACY,
            subject,
        )?) == Some(true),
        shared: flag(&annotations, SHARED, subject)?.unwrap_or(true),
        affinity: affinity(&annotations, subject)?,
    })
}

fn flag(
    annotations: &BTreeMap<String, String>,
    key: &str,
    subject: &Subject,
) -> Result<Option<bool>, TranslateError> {
    match annotations.get(key).map(|v| v.to_ascii_lowercase()) {
        None => Ok(None),
        Some(v) if v == "true" => Ok(Some(true)),
        Some(v) if v == "false" => Ok(Some(false)),
        Some(v) => Err(subject.error(
            format!("metadata.annotations.{key}"),
            format!("`{v}` is neither \"true\" nor \"false\""),
        )),
    }
}

fn affinity(
    annotations: &BTreeMap<String, String>,
    subject: &Subject,
) -> Result<Affinity, TranslateError> {
    match annotations
        .get(AFFINITY)
        .map(|v| v.to_ascii_lowercase())
        .as_deref()
    {
        None | Some("none") => Ok(Affinity::None),
        Some("local") => Ok(Affinity::Local),
        Some("remote") => Ok(Affinity::Remote),
        Some(other) => Err(subject.error(
            format!("metadata.annotations.{AFFINITY}"),
            format!("`{other}` is not one of local, remote, none"),
        )),
    }
}

fn service_port(
    name: Option<&str>,
    protocol: Option<&str>,
    port: Option<i32>,
    subject: &Subject,
    field: &str,
) -> Result<LocalServicePort, TranslateError> {
    let protocol = match protocol.unwrap_or("TCP") {
        "TCP" => 6,
        "UDP" => 17,
        "SCTP" => 132,
        other => {
            return Err(subject.error(
                format!("{field}.protocol"),
                format!("unknown protocol `{other}`"),
            ))
        }
    };
    let port = port
        .and_then(|p| u16::try_from(p).ok())
        .filter(|&p| p != 0)
        .ok_or_else(|| {
            subject.error(
                format!("{field}.port"),
                format!("{port:?} is not a port number"),
            )
        })?;
    Ok(LocalServicePort {
        name: name.unwrap_or_default().to_string(),
        protocol,
        port,
    })
}

pub(crate) fn endpoint_slice(
    slice: &EndpointSlice,
    at: ObjectRef,
    subject: &Subject,
) -> Result<LocalEndpointSlice, TranslateError> {
    if slice.address_type == "FQDN" {
        return Err(subject.error("addressType", "FQDN endpoint slices are not supported"));
    }
    let labels = slice.metadata.labels.as_ref();
    let Some(service) = labels.and_then(|l| l.get(SERVICE_NAME_LABEL)) else {
        return Err(subject.error(
            format!("metadata.labels.{SERVICE_NAME_LABEL}"),
            "missing: the slice names no service",
        ));
    };
    let ports = slice
        .ports
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, p)| {
            service_port(
                p.name.as_deref(),
                p.protocol.as_deref(),
                p.port,
                subject,
                &format!("ports[{i}]"),
            )
        })
        .collect::<Result<_, _>>()?;
    let endpoints = slice
        .endpoints
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, e)| {
            let addresses = e
                .addresses
                .iter()
                .enumerate()
                .map(|(j, a)| ip(a, subject, &format!("endpoints[{i}].addresses[{j}]")))
                .collect::<Result<_, _>>()?;
            let conditions = e.conditions.clone().unwrap_or_default();
            let ready = conditions.ready.unwrap_or(true);
            let pod = e
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"));
            Ok(SliceEndpoint {
                addresses,
                ready,
                serving: conditions.serving.unwrap_or(ready),
                terminating: conditions.terminating.unwrap_or(false),
                node: e.node_name.clone(),
                pod: pod.and_then(|r| {
                    Some(ObjectRef {
                        namespace: r.namespace.clone().unwrap_or_else(|| at.namespace.clone()),
                        name: r.name.clone()?,
                    })
                }),
            })
        })
        .collect::<Result<_, TranslateError>>()?;
    Ok(LocalEndpointSlice {
        service: ObjectRef {
            namespace: at.namespace.clone(),
            name: service.clone(),
        },
        slice: at,
        ports,
        endpoints,
    })
}

#[cfg(test)]
mod tests {
    use super::super::object::LocalObject;
    use super::super::yaml::parse_objects;
    use super::*;

    fn translate(yaml: &str) -> Result<Option<LocalObject>, TranslateError> {
        parse_objects(yaml)
            .unwrap()
            .remove(0)
            .object
            .translate()
            .map(|(_, o)| o)
    }

    fn svc(annotations: &str) -> Result<LocalService, TranslateError> {
        let yaml = format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\n  annotations: {annotations}\nspec:\n  clusterIP: None\n  ports:\n  - {{name: dns, port: 53, protocol: UDP}}\n");
        match translate(&yaml)? {
            Some(LocalObject::Service(s)) => Ok(s),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn annotations_decide_global_shared_affinity() {
        let plain = svc("{}").unwrap();
        assert!(!plain.global && plain.shared);
        assert_eq!(plain.affinity, Affinity::None);
        assert!(plain.cluster_ips.is_empty(), "headless");
        assert_eq!(
            (
                plain.ports[0].name.as_str(),
                plain.ports[0].protocol,
                plain.ports[0].port
            ),
            ("dns", 17, 53)
        );

        let global = svc(r#"{service.cilium.io/global: "true", service.cilium.io/shared: "false", service.cilium.io/affinity: remote}"#).unwrap();
        assert!(global.global && !global.shared);
        assert_eq!(global.affinity, Affinity::Remote);
        assert!(
            svc(r#"{io.cilium/global-service: "true", service.cilium.io/affinity: local}"#)
                .unwrap()
                .global
        );
        let err = svc(r#"{service.cilium.io/affinity: nearest}"#).unwrap_err();
        assert_eq!(err.field, "metadata.annotations.service.cilium.io/affinity");
        assert!(svc(r#"{service.cilium.io/global: "yes"}"#).is_err());
    }

    #[test]
    fn slice_conditions_default_as_kubernetes_says() {
        let yaml = r#"{"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
          "metadata": {"name": "web-abc", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
          "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
          "endpoints": [
            {"addresses": ["100.64.1.5"], "nodeName": "c1-n1", "targetRef": {"kind": "Pod", "name": "web-1"}},
            {"addresses": ["100.64.2.6"], "conditions": {"ready": false, "serving": true, "terminating": true}}]}"#;
        let Some(LocalObject::EndpointSlice(slice)) = translate(yaml).unwrap() else {
            panic!()
        };
        assert_eq!(
            slice.service,
            ObjectRef {
                namespace: "shop".into(),
                name: "web".into()
            }
        );
        let (up, leaving) = (&slice.endpoints[0], &slice.endpoints[1]);
        assert!(up.ready && up.serving && !up.terminating);
        assert_eq!(
            up.pod,
            Some(ObjectRef {
                namespace: "shop".into(),
                name: "web-1".into()
            })
        );
        assert!(!leaving.ready && leaving.serving && leaving.terminating);

        let orphan = yaml.replace(
            r#""labels": {"kubernetes.io/service-name": "web"}"#,
            r#""labels": {}"#,
        );
        assert_eq!(
            translate(&orphan).unwrap_err().field,
            "metadata.labels.kubernetes.io/service-name"
        );
        let bad_ip = yaml.replace("100.64.2.6", "100.64.2.666");
        assert_eq!(
            translate(&bad_ip).unwrap_err().field,
            "endpoints[1].addresses[0]"
        );
    }
}
