//! Who may do what, from the manifests of `deploy/rbac.yaml`: a bearer token stands for the
//! ServiceAccount there (`system:serviceaccount:NAMESPACE:NAME`), whose ClusterRoleBindings give it
//! their ClusterRoles' rules. Anything a rule does not grant is 403 Forbidden, as RBAC answers it —
//! so the agent's real client meets the same refusals on the lab as on a cluster with that file.

use anyhow::Context;
use serde::Deserialize;
use serde_json::Value;

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    #[serde(default)]
    api_groups: Vec<String>,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    verbs: Vec<String>,
    #[serde(default)]
    resource_names: Vec<String>,
}

impl Rule {
    fn grants(&self, request: &Request) -> bool {
        let any = |list: &[String], what: &str| list.iter().any(|x| x == "*" || x == what);
        any(&self.verbs, request.verb)
            && any(&self.api_groups, request.group)
            && any(&self.resources, request.resource)
            && (self.resource_names.is_empty()
                || request
                    .name
                    .is_some_and(|n| self.resource_names.iter().any(|r| r == n)))
    }
}

/// What a request asks to do.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub verb: &'a str,
    pub group: &'a str,
    pub resource: &'a str,
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
}

/// The one ServiceAccount the stand-in knows, and its rules.
#[derive(Clone, Debug)]
pub struct Rbac {
    pub user: String,
    rules: Vec<Rule>,
}

impl Rbac {
    /// The ServiceAccount of the manifests and every rule bound to it.
    pub fn from_manifests(text: &str) -> anyhow::Result<Rbac> {
        let docs: Vec<Value> = serde_saphyr::from_str_multiple(text).context("RBAC manifests")?;
        let of_kind = |kind: &'static str| docs.iter().filter(move |d| d["kind"] == kind);
        let account = of_kind("ServiceAccount")
            .next()
            .context("no ServiceAccount")?;
        let (ns, name) = (
            account["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default"),
            account["metadata"]["name"]
                .as_str()
                .context("a ServiceAccount without a name")?,
        );
        let bound_roles: Vec<&str> = of_kind("ClusterRoleBinding")
            .filter(|b| {
                b["subjects"].as_array().into_iter().flatten().any(|s| {
                    s["kind"] == "ServiceAccount" && s["name"] == name && s["namespace"] == ns
                })
            })
            .filter_map(|b| b["roleRef"]["name"].as_str())
            .collect();
        let mut rules = Vec::new();
        for role in of_kind("ClusterRole") {
            if bound_roles.iter().any(|r| role["metadata"]["name"] == *r) {
                let role_rules: Vec<Rule> = serde_json::from_value(role["rules"].clone())
                    .context("a ClusterRole's rules")?;
                rules.extend(role_rules);
            }
        }
        Ok(Rbac {
            user: format!("system:serviceaccount:{ns}:{name}"),
            rules,
        })
    }

    pub fn allows(&self, request: &Request) -> bool {
        self.rules.iter().any(|r| r.grants(request))
    }

    /// The message RBAC gives for a refusal.
    pub fn refusal(&self, r: &Request) -> String {
        let scope = match r.namespace {
            Some(ns) => format!("in the namespace \"{ns}\""),
            None => "at the cluster scope".to_owned(),
        };
        let resource = match r.group {
            "" => r.resource.to_owned(),
            group => format!("{}.{group}", r.resource),
        };
        let named = r.name.map(|n| format!(" \"{n}\"")).unwrap_or_default();
        format!(
            "{resource}{named} is forbidden: User \"{}\" cannot {} resource \"{}\" in API group \"{}\" {scope}",
            self.user, r.verb, r.resource, r.group
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEPLOY: &str = include_str!("../../../deploy/rbac.yaml");

    fn request<'a>(verb: &'a str, group: &'a str, resource: &'a str) -> Request<'a> {
        Request {
            verb,
            group,
            resource,
            namespace: None,
            name: None,
        }
    }

    #[test]
    fn the_deployed_role_grants_list_and_watch_only() {
        let rbac = Rbac::from_manifests(DEPLOY).unwrap();
        assert_eq!(rbac.user, "system:serviceaccount:kube-system:meshpath");
        assert!(rbac.allows(&request("list", "", "pods")));
        assert!(rbac.allows(&request("watch", "discovery.k8s.io", "endpointslices")));
        assert!(rbac.allows(&request(
            "watch",
            "cilium.io",
            "ciliumclusterwidenetworkpolicies"
        )));
        assert!(!rbac.allows(&request("get", "", "pods")));
        assert!(!rbac.allows(&request("list", "", "secrets")));
        assert!(!rbac.allows(&request("list", "discovery.k8s.io", "pods")));
        assert!(!rbac.allows(&request("create", "", "pods")));
        let refused = Request {
            namespace: Some("default"),
            name: Some("x-wing"),
            ..request("get", "", "pods")
        };
        assert_eq!(
            rbac.refusal(&refused),
            "pods \"x-wing\" is forbidden: User \"system:serviceaccount:kube-system:meshpath\" cannot get resource \"pods\" in API group \"\" in the namespace \"default\""
        );
    }
}
