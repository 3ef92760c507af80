//! The stores the contract suite runs against, each fresh for one test.

use crate::ddb_local::DynamoDbLocal;
use opscore_core::memory::InMemoryStore;
use opscore_core::store::Store;
use opscore_dynamo::{DynamoStore, EmbeddedDynamo, create_table};
use opscore_sqlite::SqliteStore;
use std::sync::Arc;

/// One store under test.
pub struct Fixture {
    pub name: &'static str,
    pub store: Arc<dyn Store>,
    /// Set for the DynamoDB-backed stores.
    pub dynamo: Option<DynamoFixture>,
}

pub struct DynamoFixture {
    pub store: Arc<DynamoStore>,
    pub client: aws_sdk_dynamodb::Client,
    pub table: String,
    pub endpoint: String,
    /// Keeps the embedded server alive for the test.
    pub embedded: Option<EmbeddedDynamo>,
}

impl Fixture {
    pub fn dynamo(&self) -> &DynamoFixture {
        self.dynamo
            .as_ref()
            .unwrap_or_else(|| panic!("{} is not a DynamoDB store", self.name))
    }
}

impl DynamoFixture {
    pub async fn streams_client(&self) -> aws_sdk_dynamodbstreams::Client {
        opscore_dynamo::streams_client_for_endpoint(Some(&self.endpoint)).await
    }
}

/// The in-memory adapter: the reference semantics.
pub async fn memory() -> Fixture {
    Fixture {
        name: "memory",
        store: Arc::new(InMemoryStore::new()),
        dynamo: None,
    }
}

/// The local stack's store (SQLite), in a temporary file of its own.
pub async fn sqlite() -> Fixture {
    Fixture {
        name: "sqlite",
        store: Arc::new(SqliteStore::temporary().expect("temporary sqlite store")),
        dynamo: None,
    }
}

/// Amazon DynamoDB Local (one JVM per test binary), a fresh table per test.
pub async fn dynamodb_local() -> Fixture {
    let local = DynamoDbLocal::shared().await;
    let (client, table) = local.fresh_table().await;
    let store = Arc::new(DynamoStore::new(client.clone(), table.clone()));
    Fixture {
        name: "dynamodb-local",
        store: store.clone(),
        dynamo: Some(DynamoFixture {
            store,
            client,
            table,
            endpoint: local.endpoint.clone(),
            embedded: None,
        }),
    }
}

/// The embedded store (dynoxide, in memory), one per test.
pub async fn embedded() -> Fixture {
    let server = EmbeddedDynamo::start().await.expect("embedded store starts");
    let client = server.client().await;
    let table = "opscore".to_string();
    create_table(&client, &table).await.expect("create table");
    let store = Arc::new(DynamoStore::new(client.clone(), table.clone()));
    Fixture {
        name: "embedded",
        store: store.clone(),
        dynamo: Some(DynamoFixture {
            store,
            client,
            table,
            endpoint: server.endpoint.clone(),
            embedded: Some(server),
        }),
    }
}
