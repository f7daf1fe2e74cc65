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

/// The kubelet's device-plugin checkpoint
/// (`/var/lib/kubelet/device-plugins/kubelet_internal_checkpoint`): which
/// pods the kubelet gave which devices (`nvidia.com/gpu`, `amd.com/gpu`,
/// `gpu.intel.com/i915`…). A process in a pod that uses a GPU its pod was
/// never allocated (a privileged pod, `/dev/nvidia*` mounted by hand, a
/// runtime hook misused) is not scheduled GPU use.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceAllocations {
    /// Registered GPU resource names.
    pub gpu_resources: Vec<String>,
    /// Pod uid → GPU resources allocated to it (name, device count).
    pub pods: HashMap<String, Vec<(String, usize)>>,
}

/// Most bytes of the checkpoint read.
pub const MAX_CHECKPOINT_BYTES: u64 = 8 << 20;

fn is_gpu_resource(name: &str) -> bool {
    name.to_ascii_lowercase().contains("gpu")
}

/// Parses the checkpoint's JSON: `Data.PodDeviceEntries[]` (`PodUID`,
/// `ResourceName`, `DeviceIDs` as a list (before Kubernetes 1.20) or a map of
/// NUMA node → list) and `Data.RegisteredDevices` (resource → devices).
pub fn parse_checkpoint(text: &str) -> Result<DeviceAllocations, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let data = v.get("Data").ok_or("no Data")?;
    let mut out = DeviceAllocations::default();
    if let Some(reg) = data.get("RegisteredDevices").and_then(|r| r.as_object()) {
        out.gpu_resources = reg.keys().filter(|k| is_gpu_resource(k)).take(64).cloned().collect();
        out.gpu_resources.sort();
    }
    for e in data
        .get("PodDeviceEntries")
        .and_then(|p| p.as_array())
        .into_iter()
        .flatten()
        .take(100_000)
    {
        let (Some(uid), Some(res)) = (
            e.get("PodUID").and_then(|u| u.as_str()),
            e.get("ResourceName").and_then(|r| r.as_str()),
        ) else {
            continue;
        };
        if !is_gpu_resource(res) {
            continue;
        }
        let count = match e.get("DeviceIDs") {
            Some(serde_json::Value::Array(a)) => a.len(),
            Some(serde_json::Value::Object(m)) => m.values().filter_map(|l| l.as_array()).map(|l| l.len()).sum(),
            _ => 0,
        };
        let res: String = res.chars().take(64).collect();
        out.pods.entry(uid.to_ascii_lowercase()).or_default().push((res, count));
    }
    Ok(out)
}

/// The checkpoint at a path, read again when its size or mtime changes.
pub struct Checkpoint {
    path: PathBuf,
    last: Option<((std::time::SystemTime, u64), Result<DeviceAllocations, String>)>,
}

impl Checkpoint {
    /// The checkpoint at `path` (not read yet).
    pub fn new(path: PathBuf) -> Self {
        Checkpoint { path, last: None }
    }

    /// The allocations, or `None` when the file is absent (no kubelet, or
    /// no device plugin: nothing to compare with). An unreadable or
    /// malformed file is an error naming it.
    pub fn get(&mut self) -> Option<Result<&DeviceAllocations, String>> {
        let meta = std::fs::metadata(&self.path).ok()?;
        let stamp = (meta.modified().unwrap_or(std::time::UNIX_EPOCH), meta.len());
        if self.last.as_ref().is_none_or(|(s, _)| *s != stamp) {
            let r = if meta.len() > MAX_CHECKPOINT_BYTES {
                Err(format!("larger than {MAX_CHECKPOINT_BYTES} bytes"))
            } else {
                std::fs::read_to_string(&self.path)
                    .map_err(|e| e.to_string())
                    .and_then(|t| parse_checkpoint(&t))
            };
            self.last = Some((stamp, r.map_err(|e| format!("{}: {e}", self.path.display()))));
        }
        Some(self.last.as_ref().expect("just set").1.as_ref().map_err(Clone::clone))
    }
}

/// What the kubelet allocated a pod, for GPU use inside it: `None` when
/// it was allocated a GPU resource (scheduled use), else why not.
pub fn pod_gpu_allocation(a: &DeviceAllocations, pod_uid: &str) -> Option<String> {
    if a.gpu_resources.is_empty() {
        return None;
    }
    match a.pods.get(&pod_uid.to_ascii_lowercase()) {
        Some(r) if r.iter().any(|(_, n)| *n > 0) => None,
        _ => Some(format!(
            "pod {pod_uid} was allocated no {} by the kubelet",
            a.gpu_resources.join(" or ")
        )),
    }
}

#[cfg(test)]
mod checkpoint_tests {
    use super::*;

    const POD_A: &str = "1b2c3d4e-1111-2222-3333-444455556666";
    const POD_B: &str = "aaaaaaaa-1111-2222-3333-444455556666";

    /// The shape of a kubelet 1.20+ checkpoint with the NVIDIA device plugin.
    fn fixture() -> String {
        format!(
            r#"{{"Data":{{"PodDeviceEntries":[
                {{"PodUID":"{POD_A}","ContainerName":"train","ResourceName":"nvidia.com/gpu","DeviceIDs":{{"0":["GPU-fa4e0000-0000-4000-8000-000000000000"]}},"AllocResp":"CiQK"}},
                {{"PodUID":"{POD_B}","ContainerName":"web","ResourceName":"example.com/nic","DeviceIDs":{{"0":["nic0"]}},"AllocResp":""}}],
              "RegisteredDevices":{{"nvidia.com/gpu":["GPU-fa4e0000-0000-4000-8000-000000000000","GPU-fa4e0001-0000-4000-8000-000000000000"],"example.com/nic":["nic0"]}}}},
             "Checksum":1234}}"#
        )
    }

    #[test]
    fn a_pod_without_a_gpu_allocation_is_named() {
        let a = parse_checkpoint(&fixture()).unwrap();
        assert_eq!(a.gpu_resources, vec!["nvidia.com/gpu"]);
        assert_eq!(pod_gpu_allocation(&a, POD_A), None, "allocated one GPU");
        assert_eq!(
            pod_gpu_allocation(&a, POD_B).as_deref(),
            Some(format!("pod {POD_B} was allocated no nvidia.com/gpu by the kubelet").as_str()),
            "a NIC is not a GPU"
        );
        // before 1.20: DeviceIDs is a list
        let old = fixture().replace(r#"{"0":["GPU-fa4e0000-0000-4000-8000-000000000000"]}"#, r#"["GPU-x"]"#);
        assert_eq!(pod_gpu_allocation(&parse_checkpoint(&old).unwrap(), POD_A), None);
        // no GPU device plugin registered: nothing to compare with
        let none = parse_checkpoint(r#"{"Data":{"PodDeviceEntries":[],"RegisteredDevices":{}}}"#).unwrap();
        assert_eq!(pod_gpu_allocation(&none, POD_B), None);
        assert!(parse_checkpoint("{").is_err() && parse_checkpoint("[]").is_err());
    }

    #[test]
    fn the_file_is_read_again_when_it_changes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("kubelet_internal_checkpoint");
        let mut c = Checkpoint::new(p.clone());
        assert!(c.get().is_none(), "no kubelet");
        std::fs::write(&p, "garbage").unwrap();
        assert!(c.get().unwrap().unwrap_err().contains("kubelet_internal_checkpoint: not JSON"));
        std::fs::write(&p, fixture()).unwrap();
        assert_eq!(c.get().unwrap().unwrap().pods.len(), 1);
    }
}
