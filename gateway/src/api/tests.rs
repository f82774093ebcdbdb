#![allow(clippy::unwrap_used)]
//! The control API over a real Unix socket: the mode, the version check, status, flow
//! listings with filter and limit, and following.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;

use meshgw_common::maps::{v4_mapped, FAMILY_V4};
use meshgw_common::telemetry::{FlowEvent, EVENT_DROP, EVENT_NEW_FLOW};

use super::client::{Client, ClientError};
use super::server::{bind, serve, Shared};
use crate::flows::{Filter, Names, Verdict};

fn event(sport: u16, kind: u8) -> FlowEvent {
    FlowEvent {
        src: v4_mapped([10, 100, 0, 2]),
        dst: v4_mapped([10, 200, 0, 1]),
        sport: sport.to_be(),
        dport: 80u16.to_be(),
        proto: 6,
        family: FAMILY_V4,
        kind,
        l3_len: 60,
        ..FlowEvent::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_serves_status_flows_and_follow_and_refuses_other_versions() {
    let dir = std::env::temp_dir().join(format!("meshgw-api-test-{}", std::process::id()));
    let path = dir.join("api.sock");
    let shared = Shared::new(100);
    shared.snapshot.write().unwrap().taken_at_ms = 42;
    {
        let mut t = shared.table.lock().unwrap();
        for (i, kind) in [EVENT_NEW_FLOW, EVENT_NEW_FLOW, EVENT_DROP]
            .iter()
            .enumerate()
        {
            t.ingest(
                &event(1000 + i as u16, *kind),
                10 + i as u64,
                &Names::default(),
            );
        }
    }
    let listener = bind(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "root only");
    let task = tokio::spawn(serve(listener, shared.clone()));

    let p = path.clone();
    let sh = shared.clone();
    tokio::task::spawn_blocking(move || {
        let mut c = Client::connect(&p).unwrap();
        assert_eq!(c.status().unwrap().taken_at_ms, 42);
        let all = c.recent_flows(Filter::default(), 0).unwrap();
        assert_eq!(all.len(), 3);
        let last = c.recent_flows(Filter::default(), 1).unwrap();
        assert_eq!(last.len(), 1);
        assert_eq!(last[0].src.port, 1002, "the most recent");
        let drops = Filter {
            verdict: Some(Verdict::Dropped),
            ..Filter::default()
        };
        assert_eq!(c.recent_flows(drops.clone(), 0).unwrap().len(), 1);

        // Following: the listing, then what arrives.
        let mut f = Client::connect(&p).unwrap();
        f.flows(true, drops, 0).unwrap();
        assert_eq!(f.next_flow().unwrap().unwrap().src.port, 1002);
        let rec = sh
            .table
            .lock()
            .unwrap()
            .ingest(&event(2000, EVENT_DROP), 99, &Names::default());
        sh.flows.send(rec).unwrap();
        assert_eq!(f.next_flow().unwrap().unwrap().src.port, 2000);

        // Another protocol version is refused with a reason, on the same connection.
        let mut raw = UnixStream::connect(&p).unwrap();
        raw.write_all(b"{\"version\":2,\"request\":\"status\"}\n")
            .unwrap();
        let mut line = String::new();
        BufReader::new(raw.try_clone().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            line.contains("\"reply\":\"error\"") && line.contains("version 2"),
            "{line}"
        );
        raw.write_all(b"not json\n").unwrap();
    })
    .await
    .unwrap();
    task.abort();
    let _ = task.await;
    std::fs::remove_file(&path).unwrap();
    match Client::connect(&path) {
        Err(ClientError::NotRunning(_)) => {}
        other => panic!("{:?}", other.err()),
    }
    let _ = std::fs::remove_dir_all(&dir);
}
