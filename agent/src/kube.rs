//! Kubernetes pod names for findings. The cgroup path of a process in a pod
//! carries the pod's uid (`…/kubepods-burstable-pod<uid>.slice/…`), and the
//! kubelet keeps each pod's logs in `/var/log/pods/NAMESPACE_NAME_UID`: so the
//! host's own files name the pod and its namespace, with no API server call.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How often the pod log directory is listed again when a uid is unknown.
const RESCAN: Duration = Duration::from_secs(5);

/// A pod: namespace and name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    /// The namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
}

/// Pod uid → pod, from the kubelet's pod log directories under a host root.
pub struct PodNames {
    dir: PathBuf,
    by_uid: HashMap<String, Pod>,
    listed: Option<Instant>,
}

impl PodNames {
    /// Pods whose log directories are in `host_root`/var/log/pods.
    pub fn new(host_root: &Path) -> Self {
        PodNames {
            dir: host_root.join("var/log/pods"),
            by_uid: HashMap::new(),
            listed: None,
        }
    }

    /// The pod with this uid, listing the directory again (at most every
    /// few seconds) when the uid is not known yet.
    pub fn lookup(&mut self, uid: &str) -> Option<Pod> {
        if let Some(p) = self.by_uid.get(uid) {
            return Some(p.clone());
        }
        if self.listed.is_none_or(|t| t.elapsed() >= RESCAN) {
            self.listed = Some(Instant::now());
            if let Ok(rd) = std::fs::read_dir(&self.dir) {
                self.by_uid = rd
                    .flatten()
                    .filter_map(|e| parse_dir_name(&e.file_name().to_string_lossy()))
                    .collect();
            }
        }
        self.by_uid.get(uid).cloned()
    }
}

/// `NAMESPACE_NAME_UID` → (uid, pod). Namespaces and pod names are DNS
/// names (no `_`), and the uid is a 36-character UUID.
pub fn parse_dir_name(s: &str) -> Option<(String, Pod)> {
    let mut it = s.splitn(3, '_');
    let (namespace, name, uid) = (it.next()?, it.next()?, it.next()?);
    let dns = |x: &str| {
        !x.is_empty()
            && x.len() <= 253
            && x.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    let uuid = uid.len() == 36 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    (dns(namespace) && dns(name) && uuid).then(|| {
        (
            uid.to_ascii_lowercase(),
            Pod {
                namespace: namespace.to_string(),
                name: name.to_string(),
            },
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_log_directories() {
        let (uid, pod) = parse_dir_name("ml-team_train-job-7f9c_1b2c3d4e-1111-2222-3333-444455556666").unwrap();
        assert_eq!(uid, "1b2c3d4e-1111-2222-3333-444455556666");
        assert_eq!((pod.namespace.as_str(), pod.name.as_str()), ("ml-team", "train-job-7f9c"));
        for bad in [
            "",
            "a_b",
            "a_b_c",
            "A_b_1b2c3d4e-1111-2222-3333-444455556666",
            "a__1b2c3d4e-1111-2222-3333-444455556666",
        ] {
            assert!(parse_dir_name(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn lookup_lists_again_for_new_pods() {
        let d = tempfile::tempdir().unwrap();
        let logs = d.path().join("var/log/pods");
        std::fs::create_dir_all(logs.join("default_web-1_aaaaaaaa-1111-2222-3333-444455556666")).unwrap();
        let mut p = PodNames::new(d.path());
        assert_eq!(p.lookup("aaaaaaaa-1111-2222-3333-444455556666").unwrap().name, "web-1");
        assert!(p.lookup("bbbbbbbb-1111-2222-3333-444455556666").is_none());
        std::fs::create_dir_all(logs.join("crypto_xmr-2_bbbbbbbb-1111-2222-3333-444455556666")).unwrap();
        // within the rescan interval the miss is remembered
        assert!(p.lookup("bbbbbbbb-1111-2222-3333-444455556666").is_none());
        p.listed = None;
        let pod = p.lookup("bbbbbbbb-1111-2222-3333-444455556666").unwrap();
        assert_eq!((pod.namespace.as_str(), pod.name.as_str()), ("crypto", "xmr-2"));
    }
}
