//! The in-memory test bed the simulator runs on: connections served from any byte stream as a
//! given identity, and every accepted write reported to an observer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use endpoint_copier_testbed::{Options, TestBed, Verb};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the observer saw of one write: who, which verb, which object, whether it is stored.
type Seen = (String, Verb, String, bool);

/// Sends one request on a fresh in-memory connection as `identity`; returns the whole answer.
async fn exchange(bed: &TestBed, identity: &str, request: &str) -> String {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let serving = tokio::spawn(bed.serve_connection(server, identity));
    client.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).await.unwrap();
    serving.await.unwrap();
    String::from_utf8(answer).unwrap()
}

fn post_lease(name: &str) -> String {
    let body = format!(
        r#"{{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{{"name":"{name}","namespace":"default"}},"spec":{{"holderIdentity":"x"}}}}"#
    );
    format!(
        "POST /apis/coordination.k8s.io/v1/namespaces/default/leases HTTP/1.1\r\nHost: sim\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn an_in_memory_connection_is_served_as_the_identity_given() {
    let bed = TestBed::in_memory(Options::default());
    let answer = exchange(&bed, "node-7", &post_lease("one")).await;
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    let log = bed.requests();
    let create = log.iter().find(|r| r.verb == Verb::Create).unwrap();
    assert_eq!(create.identity, "node-7");
    assert_eq!(create.resource, "leases");
}

#[tokio::test]
async fn every_accepted_write_reaches_the_observer_with_the_store_as_it_left_it() {
    let bed = TestBed::in_memory(Options::default());
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    {
        let seen = Arc::clone(&seen);
        bed.on_write(Arc::new(move |a, store| {
            let name = a.object["metadata"]["name"].as_str().unwrap().to_owned();
            let leases =
                endpoint_copier_testbed::store::resource("coordination.k8s.io", "v1", "leases")
                    .unwrap();
            let stored = store.get(leases, Some("default"), &name).is_ok();
            seen.lock()
                .unwrap()
                .push((a.identity.to_owned(), a.verb, name, stored));
        }));
    }
    exchange(&bed, "node-1", &post_lease("one")).await;
    // A refused write (it exists) and a read are not reported.
    let again = exchange(&bed, "node-2", &post_lease("one")).await;
    assert!(again.starts_with("HTTP/1.1 409"), "{again}");
    let get = "GET /apis/coordination.k8s.io/v1/namespaces/default/leases/one HTTP/1.1\r\nHost: sim\r\nConnection: close\r\n\r\n";
    assert!(
        exchange(&bed, "node-2", get)
            .await
            .starts_with("HTTP/1.1 200")
    );
    let delete = "DELETE /apis/coordination.k8s.io/v1/namespaces/default/leases/one HTTP/1.1\r\nHost: sim\r\nConnection: close\r\n\r\n";
    assert!(
        exchange(&bed, "node-3", delete)
            .await
            .starts_with("HTTP/1.1 200")
    );
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            ("node-1".to_owned(), Verb::Create, "one".to_owned(), true),
            ("node-3".to_owned(), Verb::Delete, "one".to_owned(), false),
        ]
    );
}
