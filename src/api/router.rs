//! From an HTTP request to an [`Action`]: a pure function of the method, path and body,
//! so it can be fuzzed without KVM. The paths, error texts and status codes follow
//! Firecracker's `api_server/parsed_request.rs`.

use micro_http::{Method, Request};
use serde::de::DeserializeOwned;

use super::models::*;

/// What a request asks for, parsed and checked for shape (not yet for state).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// `GET /`.
    GetInstanceInfo,
    /// `GET /version`.
    GetVersion,
    /// `GET /vm/config`.
    GetVmConfig,
    /// `GET /machine-config`.
    GetMachineConfig,
    /// `PUT /machine-config`.
    PutMachineConfig(MachineConfig),
    /// `PATCH /machine-config`.
    PatchMachineConfig(MachineConfigUpdate),
    /// `PUT /boot-source`.
    PutBootSource(BootSource),
    /// `PUT /drives/{id}`.
    PutDrive(Drive),
    /// `PATCH /drives/{id}`.
    PatchDrive(PartialDrive),
    /// `PUT /network-interfaces/{id}`.
    PutNet(NetworkInterface),
    /// `PATCH /network-interfaces/{id}`.
    PatchNet(PartialNetworkInterface),
    /// `PUT /vsock`.
    PutVsock(Vsock),
    /// `PUT /entropy`.
    PutEntropy(Entropy),
    /// `PUT /logger`.
    PutLogger(Logger),
    /// `PUT /metrics`.
    PutMetrics(Metrics),
    /// `PUT /actions` with InstanceStart.
    InstanceStart,
    /// `PUT /actions` with SendCtrlAltDel.
    SendCtrlAltDel,
    /// `PUT /actions` with FlushMetrics.
    FlushMetrics,
    /// `PATCH /vm` with Paused.
    Pause,
    /// `PATCH /vm` with Resumed.
    Resume,
    /// `PUT /snapshot/create`.
    CreateSnapshot(SnapshotCreate),
    /// `PUT /snapshot/load`.
    LoadSnapshot(SnapshotLoad),
    /// `GET /checkpoints` (hearth extension).
    GetCheckpoints,
    /// `PUT /checkpoints` (hearth extension).
    PutCheckpoints(Checkpoints),
    /// `DELETE /checkpoints` (hearth extension).
    DeleteCheckpoints,
}

/// A request refused before it reaches the VM: always a 400 with this message, as
/// Firecracker answers.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Fault(pub String);

impl Fault {
    fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// Endpoints Firecracker has and hearth does not, with the feature each needs.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("mmds", "MMDS (the microVM metadata service)"),
    ("balloon", "the balloon device"),
    ("pmem", "virtio-pmem devices"),
    ("hotplug", "memory hotplug (virtio-mem)"),
    ("cpu-config", "custom CPU templates"),
    ("serial", "serial device configuration"),
];

fn method_name(method: Method) -> &'static str {
    match method {
        Method::Get => "GET",
        Method::Put => "PUT",
        Method::Patch => "PATCH",
        Method::Delete => "DELETE",
    }
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, Fault> {
    serde_json::from_slice(body).map_err(|e| {
        Fault(format!(
            "An error occurred when deserializing the json body of a request: {e}."
        ))
    })
}

/// Checks a resource ID from the path against the one in the body, as Firecracker does.
fn check_id(path_id: Option<&str>, body_id: &str) -> Result<(), Fault> {
    let path_id = path_id.ok_or_else(|| Fault::new("Missing ID."))?;
    if path_id.is_empty() {
        return Err(Fault::new("The ID cannot be empty."));
    }
    if !path_id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(Fault::new(
            "API Resource IDs can only contain alphanumeric characters and underscores.",
        ));
    }
    if path_id != body_id {
        return Err(Fault::new(
            "The id from the path does not match the id from the body!",
        ));
    }
    Ok(())
}

/// Routes a parsed request.
pub fn route(method: Method, uri: &str, body: Option<&[u8]>) -> Result<Action, Fault> {
    let mut tokens = uri.trim_start_matches('/').split_terminator('/');
    let path = tokens.next().unwrap_or("");
    let sub = tokens.next();
    let extra = tokens.next().is_some();
    let invalid = || {
        Fault(format!(
            "Invalid request method and/or path: {} {uri}.",
            method_name(method)
        ))
    };
    if extra {
        return Err(invalid());
    }
    if let Some((_, feature)) = UNSUPPORTED.iter().find(|(p, _)| *p == path) {
        return Err(Fault(format!(
            "{} {uri}: hearth does not implement {feature}.",
            method_name(method)
        )));
    }
    let body = body.filter(|b| !b.is_empty());
    match (method, path, sub, body) {
        (Method::Get, "", None, None) => Ok(Action::GetInstanceInfo),
        (Method::Get, "version", None, None) => Ok(Action::GetVersion),
        (Method::Get, "vm", Some("config"), None) => Ok(Action::GetVmConfig),
        (Method::Get, "machine-config", None, None) => Ok(Action::GetMachineConfig),
        (Method::Get, "checkpoints", None, None) => Ok(Action::GetCheckpoints),
        (Method::Delete, "checkpoints", None, None) => Ok(Action::DeleteCheckpoints),
        (Method::Get, _, _, Some(_)) => Err(Fault::new("GET request cannot have a body.")),
        (Method::Put, _, _, None) => Err(Fault::new("Empty PUT request.")),
        (Method::Patch, _, _, None) => Err(Fault::new("Empty PATCH request.")),
        (Method::Put, "actions", None, Some(b)) => {
            Ok(match parse::<InstanceAction>(b)?.action_type {
                ActionType::InstanceStart => Action::InstanceStart,
                ActionType::SendCtrlAltDel => Action::SendCtrlAltDel,
                ActionType::FlushMetrics => Action::FlushMetrics,
            })
        }
        (Method::Put, "boot-source", None, Some(b)) => Ok(Action::PutBootSource(parse(b)?)),
        (Method::Put, "machine-config", None, Some(b)) => Ok(Action::PutMachineConfig(parse(b)?)),
        (Method::Patch, "machine-config", None, Some(b)) => {
            let update: MachineConfigUpdate = parse(b)?;
            if update == MachineConfigUpdate::default() {
                return Err(Fault::new("Empty PATCH request."));
            }
            Ok(Action::PatchMachineConfig(update))
        }
        (Method::Put, "drives", id, Some(b)) => {
            let drive: Drive = parse(b)?;
            check_id(id, &drive.drive_id)?;
            Ok(Action::PutDrive(drive))
        }
        (Method::Patch, "drives", id, Some(b)) => {
            let drive: PartialDrive = parse(b)?;
            check_id(id, &drive.drive_id)?;
            Ok(Action::PatchDrive(drive))
        }
        (Method::Put, "network-interfaces", id, Some(b)) => {
            let net: NetworkInterface = parse(b)?;
            check_id(id, &net.iface_id)?;
            Ok(Action::PutNet(net))
        }
        (Method::Patch, "network-interfaces", id, Some(b)) => {
            let net: PartialNetworkInterface = parse(b)?;
            check_id(id, &net.iface_id)?;
            Ok(Action::PatchNet(net))
        }
        (Method::Put, "vsock", None, Some(b)) => Ok(Action::PutVsock(parse(b)?)),
        (Method::Put, "entropy", None, Some(b)) => Ok(Action::PutEntropy(parse(b)?)),
        (Method::Put, "logger", None, Some(b)) => Ok(Action::PutLogger(parse(b)?)),
        (Method::Put, "metrics", None, Some(b)) => Ok(Action::PutMetrics(parse(b)?)),
        (Method::Put, "checkpoints", None, Some(b)) => Ok(Action::PutCheckpoints(parse(b)?)),
        (Method::Patch, "vm", None, Some(b)) => Ok(match parse::<VmStateUpdate>(b)?.state {
            VmState::Paused => Action::Pause,
            VmState::Resumed => Action::Resume,
        }),
        (Method::Put, "snapshot", Some("create"), Some(b)) => {
            let params: SnapshotCreate = parse(b)?;
            Ok(Action::CreateSnapshot(params))
        }
        (Method::Put, "snapshot", Some("load"), Some(b)) => {
            let params: SnapshotLoad = parse(b)?;
            check_load(&params)?;
            Ok(Action::LoadSnapshot(params))
        }
        _ => Err(invalid()),
    }
}

fn check_load(params: &SnapshotLoad) -> Result<(), Fault> {
    match (&params.mem_file_path, &params.mem_backend) {
        (Some(_), Some(_)) | (None, None) => Err(Fault::new(
            "Loading a microVM snapshot not allowed due to invalid parameters: \
             exactly one of mem_file_path and mem_backend must be given.",
        )),
        (None, Some(b)) if b.backend_type == MemBackendType::Uffd => Err(Fault::new(
            "The Uffd memory backend is not supported by hearth: use backend_type File.",
        )),
        _ => Ok(()),
    }
}

/// Routes a request parsed by micro_http.
pub fn route_request(request: &Request) -> Result<Action, Fault> {
    route(
        request.method(),
        request.uri().get_abs_path(),
        request.body.as_ref().map(|b| b.body.as_slice()),
    )
}

/// Parses raw request bytes and routes them (what the fuzz target drives): every input
/// either routes or gets a fault, never a panic.
pub fn route_bytes(bytes: &[u8], max_payload: usize) -> Result<Action, Fault> {
    let request = Request::try_from(bytes, Some(max_payload))
        .map_err(|e| Fault(format!("malformed HTTP request: {e}")))?;
    route_request(&request)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(uri: &str, body: &str) -> Result<Action, Fault> {
        route(Method::Put, uri, Some(body.as_bytes()))
    }

    #[test]
    fn routes_firecracker_requests() {
        assert_eq!(route(Method::Get, "/", None), Ok(Action::GetInstanceInfo));
        assert_eq!(
            route(Method::Get, "/vm/config", None),
            Ok(Action::GetVmConfig)
        );
        assert_eq!(
            put("/actions", r#"{"action_type":"InstanceStart"}"#),
            Ok(Action::InstanceStart)
        );
        assert!(matches!(
            put("/drives/rootfs", r#"{"drive_id":"rootfs","path_on_host":"/r","is_root_device":true,"is_read_only":false}"#),
            Ok(Action::PutDrive(d)) if d.is_root_device
        ));
        assert_eq!(
            route(Method::Patch, "/vm", Some(br#"{"state":"Paused"}"#)),
            Ok(Action::Pause)
        );
    }

    #[test]
    fn refuses_bad_requests_with_firecracker_messages() {
        let fault = |r: Result<Action, Fault>| r.unwrap_err().0;
        assert!(fault(put(
            "/boot-source",
            r#"{"kernel_image_path":"k","bogus":1}"#
        ))
        .contains("unknown field `bogus`"));
        assert!(fault(put(
            "/machine-config",
            r#"{"vcpu_count":"two","mem_size_mib":1}"#
        ))
        .contains("invalid type"));
        assert!(fault(put("/machine-config", r#"{"vcpu_count":2}"#))
            .contains("missing field `mem_size_mib`"));
        assert_eq!(
            fault(put(
                "/drives/a",
                r#"{"drive_id":"b","is_root_device":false}"#
            )),
            "The id from the path does not match the id from the body!"
        );
        assert_eq!(fault(put("/drives/a", "")), "Empty PUT request.");
        assert_eq!(
            fault(route(Method::Get, "/nope", None)),
            "Invalid request method and/or path: GET /nope."
        );
        assert!(fault(route(Method::Get, "/mmds", None)).contains("MMDS"));
        assert!(fault(put("/balloon", "{}")).contains("balloon"));
        assert!(fault(put(
            "/snapshot/load",
            r#"{"snapshot_path":"s","mem_file_path":"m","mem_backend":{"backend_type":"File","backend_path":"m"}}"#
        ))
        .contains("exactly one"));
    }

    #[test]
    fn raw_bytes_route_or_fault() {
        let ok = b"PUT /actions HTTP/1.1\r\nContent-Length: 33\r\n\r\n{\"action_type\":\"InstanceStart\"}  ";
        assert_eq!(route_bytes(ok, 51200), Ok(Action::InstanceStart));
        assert!(route_bytes(b"garbage\r\n\r\n", 51200).is_err());
        let big = format!(
            "PUT /logger HTTP/1.1\r\nContent-Length: 60000\r\n\r\n{}",
            " ".repeat(60000)
        );
        assert!(route_bytes(big.as_bytes(), 51200).is_err());
    }
}
