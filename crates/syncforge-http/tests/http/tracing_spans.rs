//! Every request runs in an `http_request` span with its method, route,
//! collection, record count, status and duration.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::json;
use syncforge::http::{Server, ServerOptions};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

use crate::support::{memory_engine, peer, raw_client};

type Fields = BTreeMap<String, String>;

/// A subscriber that keeps every span's name and fields, and which span is
/// entered (so that handlers can record into `Span::current()`).
#[derive(Default)]
struct Capture {
    next: AtomicU64,
    spans: Mutex<BTreeMap<u64, (String, Fields)>>,
    metadata: Mutex<BTreeMap<u64, &'static Metadata<'static>>>,
    entered: Mutex<Vec<u64>>,
}

struct Collect<'a>(&'a mut Fields);

impl Visit for Collect<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.0.insert(
            field.name().to_owned(),
            format!("{value:?}").trim_matches('"').to_owned(),
        );
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let id = self.next.fetch_add(1, Ordering::SeqCst) + 1;
        let mut fields = Fields::new();
        attrs.record(&mut Collect(&mut fields));
        self.spans
            .lock()
            .unwrap()
            .insert(id, (attrs.metadata().name().to_owned(), fields));
        self.metadata.lock().unwrap().insert(id, attrs.metadata());
        Id::from_u64(id)
    }
    fn record(&self, span: &Id, values: &Record<'_>) {
        if let Some((_, fields)) = self.spans.lock().unwrap().get_mut(&span.into_u64()) {
            values.record(&mut Collect(fields));
        }
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, _: &Event<'_>) {}
    fn enter(&self, span: &Id) {
        self.entered.lock().unwrap().push(span.into_u64());
    }
    fn exit(&self, span: &Id) {
        let mut entered = self.entered.lock().unwrap();
        if let Some(at) = entered.iter().rposition(|id| *id == span.into_u64()) {
            entered.remove(at);
        }
    }
    fn current_span(&self) -> tracing_core::span::Current {
        let current = self.entered.lock().unwrap().last().copied();
        match current.and_then(|id| Some((id, *self.metadata.lock().unwrap().get(&id)?))) {
            Some((id, metadata)) => tracing_core::span::Current::new(Id::from_u64(id), metadata),
            None => tracing_core::span::Current::none(),
        }
    }
}

/// Keeps nothing: the process-wide default, so that tests running in
/// parallel without a subscriber do not make tracing cache the request
/// span's callsite as uninteresting (see the facade's tracing test).
struct Sink;

impl Subscriber for Sink {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, _: &Event<'_>) {}
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

// One thread: the server's tasks run where the capture is the default.
#[tokio::test(flavor = "current_thread")]
async fn each_request_is_a_span_with_route_collection_records_and_status() {
    let _ = tracing::subscriber::set_global_default(Sink);
    let capture = Arc::new(Capture::default());
    let _guard = tracing::subscriber::set_default(capture.clone());

    let hq = memory_engine("hq").await;
    let server = Server::bind(hq, "127.0.0.1:0", ServerOptions::default())
        .await
        .unwrap();
    let phone = memory_engine("phone").await;
    phone.put("notes", &json!({"id": "n1"})).await.unwrap();
    phone.put("notes", &json!({"id": "n2"})).await.unwrap();
    let _ = phone
        .sync_with(&peer(&server.url(), None), "notes")
        .await
        .unwrap();
    let missing = raw_client()
        .get(format!("{}/v1/nowhere", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status().as_u16(), 404);
    server.shutdown().await.unwrap();

    let spans: Vec<Fields> = capture
        .spans
        .lock()
        .unwrap()
        .values()
        .filter(|(name, _)| name == "http_request")
        .map(|(_, fields)| fields.clone())
        .collect();
    let find = |route: &str| {
        spans
            .iter()
            .find(|fields| fields.get("route").map(String::as_str) == Some(route))
            .unwrap_or_else(|| panic!("no span for {route}: {spans:?}"))
    };
    let push = find("/v1/collections/{collection}/sync");
    assert_eq!(push["method"], "POST");
    assert_eq!(push["collection"], "notes");
    assert_eq!(push["records"], "2");
    assert_eq!(push["status"], "200");
    assert!(push.contains_key("duration_ms"));
    let pull = find("/v1/collections/{collection}/changes");
    assert_eq!(pull["method"], "GET");
    assert_eq!(pull["records"], "0");
    assert_eq!(find("/v1/health")["status"], "200");
    assert_eq!(find("unmatched")["status"], "404");
}
