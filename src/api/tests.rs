//! Which requests are valid when, checked on a controller whose VM never starts (no KVM
//! needed): the end-to-end behaviour is in tests/fc_api.rs.

use super::models::*;
use super::router::{route, Action};
use super::{Controller, Reply};
use micro_http::Method;

fn put(c: &mut Controller, uri: &str, body: &str) -> Result<Reply, String> {
    route(Method::Put, uri, Some(body.as_bytes()))
        .and_then(|a| c.handle(a))
        .map_err(|f| f.0)
}

#[test]
fn post_boot_requests_are_refused_before_boot() {
    let mut c = Controller::new("t");
    for action in [
        Action::Pause,
        Action::Resume,
        Action::SendCtrlAltDel,
        Action::CreateSnapshot(SnapshotCreate {
            mem_file_path: "m".into(),
            snapshot_path: "s".into(),
            snapshot_type: SnapshotType::Full,
        }),
    ] {
        let fault = c.handle(action).unwrap_err().0;
        assert_eq!(
            fault,
            "The requested operation is not supported before starting the microVM."
        );
    }
    let info = c.handle(Action::GetInstanceInfo).unwrap();
    let Reply::Json(info) = info else {
        panic!("GET / answers JSON")
    };
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["state"], "Not started");
    assert_eq!(info["app_name"], "Firecracker");
}

#[test]
fn a_snapshot_cannot_be_loaded_into_a_configured_vm() {
    let mut c = Controller::new("t");
    // Logger and metrics do not count as configuring the VM.
    assert_eq!(c.handle(Action::FlushMetrics), Ok(Reply::NoContent));
    put(
        &mut c,
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 32}"#,
    )
    .unwrap();
    let fault = put(
        &mut c,
        "/snapshot/load",
        r#"{"snapshot_path": "s", "mem_file_path": "m"}"#,
    )
    .unwrap_err();
    assert!(fault.contains("not allowed after configuring"), "{fault}");
}

#[test]
fn missing_snapshot_files_are_named() {
    let mut c = Controller::new("t");
    let fault = put(
        &mut c,
        "/snapshot/load",
        r#"{"snapshot_path": "/nonexistent/s", "mem_backend": {"backend_type": "File", "backend_path": "/nonexistent/m"}}"#,
    )
    .unwrap_err();
    assert!(fault.contains("/nonexistent/s"), "{fault}");
    // Still loadable after the failure.
    assert!(c.vm().is_none());
}

#[test]
fn vm_config_reflects_what_was_put() {
    let mut c = Controller::new("t");
    put(
        &mut c,
        "/boot-source",
        r#"{"kernel_image_path": "/k", "boot_args": "a"}"#,
    )
    .unwrap();
    put(
        &mut c,
        "/network-interfaces/eth0",
        r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:00:00:00:01"}"#,
    )
    .unwrap();
    let fault = put(
        &mut c,
        "/network-interfaces/eth1",
        r#"{"iface_id": "eth1", "host_dev_name": "tap0"}"#,
    )
    .unwrap_err();
    assert!(fault.contains("already in use"), "{fault}");
    let fault = put(
        &mut c,
        "/network-interfaces/eth2",
        r#"{"iface_id": "eth2", "host_dev_name": "tap2", "guest_mac": "zz"}"#,
    )
    .unwrap_err();
    assert!(fault.contains("MAC"), "{fault}");
    let Ok(Reply::Json(body)) = c.handle(Action::GetVmConfig) else {
        panic!("GET /vm/config answers JSON")
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["boot-source"]["kernel_image_path"], "/k");
    assert_eq!(v["network-interfaces"][0]["host_dev_name"], "tap0");
    assert_eq!(v["network-interfaces"].as_array().unwrap().len(), 1);
    assert_eq!(v["machine-config"]["vcpu_count"], 1);
    // The answer is itself a valid config file.
    let full: FullVmConfig = serde_json::from_str(&body).unwrap();
    assert_eq!(full.boot_source.unwrap().boot_args.as_deref(), Some("a"));
}

#[test]
fn checkpoints_come_from_the_config_file_and_go_with_delete() {
    let mut c = Controller::new("t");
    let full: FullVmConfig = serde_json::from_str(
        r#"{"boot-source": {"kernel_image_path": "/k"},
            "checkpoints": {"interval_ms": 500, "dir": "/tmp/ck", "keep": 4}}"#,
    )
    .unwrap();
    c.configure(full).unwrap();
    let Reply::Json(got) = c.handle(Action::GetCheckpoints).unwrap() else {
        panic!("GET /checkpoints answers JSON")
    };
    let got: serde_json::Value = serde_json::from_str(&got).unwrap();
    assert_eq!(got["interval_ms"], 500);
    assert_eq!(got["keep"], 4);
    assert_eq!(
        route(Method::Delete, "/checkpoints", None),
        Ok(Action::DeleteCheckpoints)
    );
    assert_eq!(c.handle(Action::DeleteCheckpoints), Ok(Reply::NoContent));
    assert_eq!(
        c.handle(Action::GetCheckpoints),
        Ok(Reply::Json("{}".into()))
    );
    let bad: FullVmConfig =
        serde_json::from_str(r#"{"checkpoints": {"interval_ms": 1, "dir": "/tmp/ck"}}"#).unwrap();
    assert!(Controller::new("u").configure(bad).is_err());
}
