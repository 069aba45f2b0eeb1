//! Which of a pod's labels make its security identity: Cilium's default label filter, so that labels
//! which change with every rollout (`pod-template-hash`, `controller-revision-hash`), name one pod
//! (`statefulset.kubernetes.io/pod-name`) or belong to Kubernetes itself do not mint an identity per
//! pod. The rules and the way they combine are those of Cilium's `pkg/labelsfilter/filter.go`
//! (`defaultLabelPrefixCfg` and `filterLabels`), as documented in "Limiting Identity-Relevant Labels".
//!
//! A rule is a regular expression that must match at the start of the label's key; an ignore rule is
//! written with `!`. A key is kept when no ignore rule matches it, or when an include rule matches a
//! longer part of it than the shortest matching ignore rule (so `io.kubernetes.pod.namespace` is kept
//! although `io.kubernetes` is ignored).

use std::sync::LazyLock;

use regex::Regex;

/// Cilium's default rules, in its order.
const DEFAULT_RULES: &[&str] = &[
    r"io\.kubernetes\.pod\.namespace",
    r"io\.cilium\.k8s\.namespace\.labels",
    r"app\.kubernetes\.io",
    r"io\.cilium\.k8s\.policy\.cluster",
    r"!io\.kubernetes",
    r"!kubernetes\.io",
    r"!statefulset\.kubernetes\.io/pod-name",
    r"!apps\.kubernetes\.io/pod-index",
    r"!batch\.kubernetes\.io/job-completion-index",
    r"!.*beta\.kubernetes\.io",
    r"!k8s\.io",
    r"!pod-template-generation",
    r"!pod-template-hash",
    r"!controller-revision-hash",
    r"!annotation.*",
    r"!etcd_node",
];

struct Rule {
    ignore: bool,
    expr: Regex,
}

impl Rule {
    fn parse(text: &str) -> Rule {
        let (ignore, pattern) = match text.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        Rule {
            ignore,
            // The defaults are constants, checked by the tests below.
            expr: Regex::new(pattern).expect("a default label rule compiles"),
        }
    }

    /// How much of `key` the rule matches, when its leftmost match starts at the beginning.
    fn matched(&self, key: &str) -> Option<usize> {
        let found = self.expr.find(key)?;
        (found.start() == 0).then_some(found.end())
    }
}

static DEFAULT: LazyLock<Vec<Rule>> =
    LazyLock::new(|| DEFAULT_RULES.iter().map(|r| Rule::parse(r)).collect());

/// Whether a label with this key is part of the identity under Cilium's default filter.
pub fn identity_relevant(key: &str) -> bool {
    let (mut included, mut ignored) = (0, None::<usize>);
    for rule in DEFAULT.iter() {
        let Some(len) = rule.matched(key) else {
            continue;
        };
        if rule.ignore {
            ignored = Some(ignored.map_or(len, |shortest| shortest.min(len)));
        } else {
            included = included.max(len);
        }
    }
    ignored.is_none_or(|ignored| included > ignored)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rollout_and_kubernetes_labels_are_left_out() {
        for key in [
            "pod-template-hash",
            "controller-revision-hash",
            "pod-template-generation",
            "statefulset.kubernetes.io/pod-name",
            "apps.kubernetes.io/pod-index",
            "batch.kubernetes.io/job-completion-index",
            "kubernetes.io/hostname",
            "io.kubernetes.container.name",
            "beta.kubernetes.io/arch",
            "failure-domain.beta.kubernetes.io/zone",
            "k8s.io/anything",
            "annotation.kubernetes.io/config.seen",
            "etcd_node",
        ] {
            assert!(!identity_relevant(key), "{key} is left out");
        }
    }

    #[test]
    fn application_namespace_and_cluster_labels_stay() {
        for key in [
            "app",
            "name",
            "tier",
            "app.kubernetes.io/name",
            "io.kubernetes.pod.namespace",
            "io.cilium.k8s.policy.cluster",
            "io.cilium.k8s.policy.serviceaccount",
            "io.cilium.k8s.namespace.labels.team",
            "example.com/kubernetes.io-like",
        ] {
            assert!(identity_relevant(key), "{key} stays");
        }
    }

    proptest! {
        /// A key that starts with none of the rules' words is always kept.
        #[test]
        fn plain_application_keys_are_kept(key in "[a-j][a-z0-9-]{0,20}") {
            prop_assume!(!key.starts_with("etcd_node") && !key.starts_with("annotation"));
            prop_assert!(identity_relevant(&key));
        }

        /// Whatever follows an ignored prefix, the key stays ignored.
        #[test]
        fn ignored_prefixes_cover_their_whole_family(rest in "[a-z0-9./-]{0,16}") {
            let hash = format!("pod-template-hash{rest}");
            let kubernetes = format!("kubernetes.io/{rest}");
            prop_assert!(!identity_relevant(&hash), "{} is kept", hash);
            prop_assert!(!identity_relevant(&kubernetes), "{} is kept", kubernetes);
        }
    }
}
