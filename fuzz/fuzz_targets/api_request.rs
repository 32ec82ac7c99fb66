//! Arbitrary bytes as an HTTP request on the API socket: parsing and routing may only
//! answer (an action or a 400 fault), and every action that needs no KVM or files is
//! carried out on a VM that has not started, whose answer must encode as HTTP.
#![no_main]

use hearth::api::router::route_bytes;
use hearth::api::server::{to_response, DEFAULT_MAX_PAYLOAD};
use hearth::api::{Action, Controller};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let outcome = route_bytes(data, DEFAULT_MAX_PAYLOAD).and_then(|action| {
        match action {
            // These boot a VM or open files named by the input.
            Action::InstanceStart
            | Action::LoadSnapshot(_)
            | Action::PutLogger(_)
            | Action::PutMetrics(_) => Ok(hearth::api::Reply::NoContent),
            action => {
                let mut controller = Controller::new("fuzz");
                let reply = controller.handle(action);
                // The description stays one a GET can report.
                let _ = controller
                    .handle(Action::GetVmConfig)
                    .expect("GET /vm/config");
                reply
            }
        }
    });
    let mut out = Vec::new();
    to_response(outcome)
        .write_all(&mut out)
        .expect("every answer encodes");
    assert!(out.starts_with(b"HTTP/1.1 "));
});
