#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `vigil-central audit verify --config C` on a real alarms.db: exit 0 on an intact chain, exit 1
//! naming the first bad record after someone edits one.

use std::process::Command;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use vigil_central::alarms::{AlarmConfig, AlarmEngine, AlarmKey, AlarmSource, Condition};
use vigil_common::{GatewayId, PointId, Sample};

fn verify(config: &std::path::Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vigil-central"))
        .args(["audit", "verify", "--config"])
        .arg(config)
        .output()
        .unwrap();
    (out.status.code().unwrap(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test]
async fn audit_verify_names_the_first_edited_record() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("central.toml");
    std::fs::write(
        &config,
        "data_dir = \"data\"\nkey_file = \"central.key\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = 1883\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            SqliteConnectOptions::new()
                .filename(data.join("alarms.db"))
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal),
        )
        .await
        .unwrap();
    let defs = AlarmConfig::from_toml("defs", "[[point]]\nid = \"P1\"\nh = 5.0\n").unwrap();
    let mut e = AlarmEngine::open_sqlite(pool.clone(), defs).await.unwrap();
    let t = 1_790_000_000_000;
    e.on_sample(&GatewayId::new("gw").unwrap(), &PointId::new("P1").unwrap(), &Sample::good(t, 9.0), t).await.unwrap();
    let key = AlarmKey { source: AlarmSource::Point("P1".into()), condition: Condition::Hi };
    let id = e.current(&key).unwrap().id;
    e.acknowledge(id, "op1", "seen", t + 1).await.unwrap();
    e.verify(id, "op1", "camera", t + 2).await.unwrap();
    e.dispatch(id, "op1", "ent", "go", t + 3).await.unwrap();

    let (code, out) = verify(&config);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("intact: 3 records"), "{out}");

    sqlx::query("DROP TRIGGER alarm_audit_no_update").execute(&pool).await.unwrap();
    sqlx::query("UPDATE alarm_audit SET detail = '{\"how\":\"guessed\"}' WHERE seq = 2").execute(&pool).await.unwrap();
    let (code, out) = verify(&config);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("record 2") && out.contains("edited"), "{out}");
}
