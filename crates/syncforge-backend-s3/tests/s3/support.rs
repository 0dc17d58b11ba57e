//! What the tests share: the S3 server, unique prefixes.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use object_store::aws::AmazonS3Builder;
use object_store::ObjectStore;
use syncforge_testkit::services::{address, available, listens};

/// Where the S3-compatible test server is (`cargo xtask ci` sets it).
pub(crate) const ENDPOINT_ENV: &str = "SYNCFORGE_TEST_S3_ENDPOINT";
/// Its bucket.
pub(crate) const BUCKET_ENV: &str = "SYNCFORGE_TEST_S3_BUCKET";

/// The test server's coordinates.
pub(crate) struct Server {
    pub(crate) endpoint: String,
    pub(crate) bucket: String,
}

impl Server {
    /// The raw object store on the server.
    pub(crate) fn store(&self) -> Arc<dyn ObjectStore> {
        Arc::new(
            AmazonS3Builder::new()
                .with_bucket_name(&self.bucket)
                .with_endpoint(&self.endpoint)
                .with_allow_http(true)
                .with_virtual_hosted_style_request(false)
                .with_region("us-east-1")
                .with_access_key_id("testing")
                .with_secret_access_key("testing")
                .build()
                .unwrap(),
        )
    }
}

/// The S3 test server, or `None` (after a visible SKIPPED line) when it does not answer.
pub(crate) async fn s3_server() -> Option<Server> {
    let endpoint = address(ENDPOINT_ENV, "http://127.0.0.1:45655");
    let bucket = address(BUCKET_ENV, "syncforge-test");
    let probed = endpoint.clone();
    let answered = tokio::task::spawn_blocking(move || listens(&probed))
        .await
        .unwrap();
    available("S3 server (moto)", ENDPOINT_ENV, &endpoint, answered)
        .then_some(Server { endpoint, bucket })
}

/// A prefix no other test or run uses.
pub(crate) fn unique_prefix(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("t-{tag}-{}-{nanos:x}", std::process::id())
}
