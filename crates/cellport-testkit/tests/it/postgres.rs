//! The private PostgreSQL cluster with the web app's tables: written as the web app writes,
//! read as Cellport reads (SPEC §10), through a stop, a restart and a crash.

use std::time::Duration;

use cellport_testkit::{PostgresOptions, PostgresServer, wait_until};
use deadpool_postgres::{Manager, Pool};
use time::PrimitiveDateTime;
use time::macros::datetime;

const USER_ID: &str = "6f1c0a52-7d1e-4b8e-9a51-3c2f0d9e8a11";
const PROJECT_ID: &str = "0b7d4c3e-2a19-4f6b-8c0d-5e4a3b2c1d00";

struct Image {
    id: &'static str,
    name: &'static str,
    display_order: Option<i32>,
    created_at: PrimitiveDateTime,
    is_video_container: bool,
}

/// Inserted out of order, so the read shows the order comes from the query: two images share a
/// display order and a creation time (id decides), two have none (they go last, by time), and a
/// video container is not one of the project's images.
const IMAGES: &[Image] = &[
    Image {
        id: "a0000000-0000-4000-8000-000000000004",
        name: "late_unordered.png",
        display_order: None,
        created_at: datetime!(2024-03-01 10:00:03.250),
        is_video_container: false,
    },
    Image {
        id: "a0000000-0000-4000-8000-000000000002",
        name: "second.png",
        display_order: Some(1),
        created_at: datetime!(2024-03-01 10:00:01),
        is_video_container: false,
    },
    Image {
        id: "a0000000-0000-4000-8000-000000000005",
        name: "clip.mp4",
        display_order: Some(0),
        created_at: datetime!(2024-03-01 10:00:00),
        is_video_container: true,
    },
    Image {
        id: "a0000000-0000-4000-8000-000000000001",
        name: "first.png",
        display_order: Some(1),
        created_at: datetime!(2024-03-01 10:00:01),
        is_video_container: false,
    },
    Image {
        id: "a0000000-0000-4000-8000-000000000003",
        name: "early_unordered.png",
        display_order: None,
        created_at: datetime!(2024-03-01 10:00:00.500),
        is_video_container: false,
    },
    Image {
        id: "a0000000-0000-4000-8000-000000000006",
        name: "third.png",
        display_order: Some(2),
        created_at: datetime!(2024-03-01 09:00:00),
        is_video_container: false,
    },
];

const POLYGONS: &str = r#"[{"id":"p1","type":"external","points":[{"x":10.5,"y":4},{"x":20,"y":4},{"x":15,"y":12.25}]},{"id":"p2","type":"internal","points":[{"x":14,"y":6},{"x":16,"y":6},{"x":15,"y":8}]}]"#;

async fn fill(url: &str) -> anyhow::Result<()> {
    let client = connect(url).await?;
    let now = datetime!(2024-03-02 08:00:00);
    client
        .execute(
            r#"INSERT INTO users (id, email, password, "updatedAt") VALUES ($1, $2, $3, $4)"#,
            &[&USER_ID, &"ana@example.org", &"$2b$10$hash", &now],
        )
        .await?;
    client
        .execute(
            r#"INSERT INTO projects (id, title, "userId", "createdAt", "updatedAt")
               VALUES ($1, $2, $3, $4, $4)"#,
            &[&PROJECT_ID, &"Spheroids, week 3", &USER_ID, &now],
        )
        .await?;
    for image in IMAGES {
        let original_path = format!(
            "{USER_ID}/{PROJECT_ID}/originals/1709287200000_{}",
            image.name
        );
        client
            .execute(
                r#"INSERT INTO images (id, name, "originalPath", "projectId", "fileSize", width, height,
                       "displayOrder", "isVideoContainer", "createdAt", "updatedAt")
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)"#,
                &[
                    &image.id,
                    &image.name,
                    &original_path,
                    &PROJECT_ID,
                    &5_000_000_000_i64,
                    &640_i32,
                    &480_i32,
                    &image.display_order,
                    &image.is_video_container,
                    &image.created_at,
                ],
            )
            .await?;
    }
    client
        .execute(
            r#"INSERT INTO segmentations (id, "imageId", polygons, model, threshold, "imageWidth", "imageHeight", "updatedAt")
               VALUES ($1, $2, $3, 'hrnet', 0.5, 640, 480, $4)"#,
            &[&"5e000000-0000-4000-8000-000000000001", &IMAGES[1].id, &POLYGONS, &now],
        )
        .await?;
    Ok(())
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// A row as Cellport reads it: name, display order, file size, polygons.
type ReadImage = (String, Option<i32>, Option<i64>, Option<String>);

/// The project's images in SPEC §10's order, inside a read-only transaction, as the source will.
async fn read_project(pool: &Pool) -> anyhow::Result<Vec<ReadImage>> {
    let mut client = pool.get().await?;
    let transaction = client.build_transaction().read_only(true).start().await?;
    let rows = transaction
        .query(
            r#"SELECT i.name, i."displayOrder", i."fileSize", s.polygons
               FROM images i LEFT JOIN segmentations s ON s."imageId" = i.id
               WHERE i."projectId" = $1 AND i."isVideoContainer" = false
               ORDER BY i."displayOrder" ASC NULLS LAST, i."createdAt" ASC, i.id ASC"#,
            &[&PROJECT_ID],
        )
        .await?;
    let write = transaction
        .execute(
            r#"UPDATE images SET name = 'renamed' WHERE "projectId" = $1"#,
            &[&PROJECT_ID],
        )
        .await;
    match write {
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION) => {
        }
        other => anyhow::bail!("a read-only transaction took a write: {other:?}"),
    }
    transaction.rollback().await?;
    Ok(rows
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3)))
        .collect())
}

fn expected() -> Vec<ReadImage> {
    let image = |name: &str, order: Option<i32>, polygons: Option<&str>| {
        (
            name.to_owned(),
            order,
            Some(5_000_000_000_i64),
            polygons.map(str::to_owned),
        )
    };
    vec![
        image("first.png", Some(1), None),
        image("second.png", Some(1), Some(POLYGONS)),
        image("third.png", Some(2), None),
        image("early_unordered.png", None, None),
        image("late_unordered.png", None, None),
    ]
}

#[tokio::test]
async fn the_web_apps_tables_are_read_in_order_through_a_stop_a_restart_and_a_crash()
-> anyhow::Result<()> {
    let mut server = PostgresServer::start(PostgresOptions::default()).await?;
    let url = server.create_webapp_database("webapp").await?;
    fill(&url).await?;

    let pool = Pool::builder(Manager::new(url.parse()?, tokio_postgres::NoTls))
        .max_size(2)
        .build()?;
    assert_eq!(read_project(&pool).await?, expected());

    let held = pool.get().await?;
    server.stop().await?;
    assert!(!server.is_running());
    let ended = held.simple_query("SELECT 1").await;
    assert!(ended.is_err(), "a stopped server ends open sessions");
    drop(held);
    let refused = tokio_postgres::connect(&url, tokio_postgres::NoTls).await;
    assert!(refused.is_err(), "a stopped server refuses connections");
    assert!(read_project(&pool).await.is_err());

    server.restart().await?;
    assert_eq!(read_project(&pool).await?, expected());

    // A crash loses no committed row. The backends notice their postmaster's death on their
    // own, so the pooled session ends a moment after the kill.
    server.kill().await?;
    let failing = wait_until(Duration::from_secs(10), || async {
        read_project(&pool).await.is_err()
    })
    .await;
    assert!(failing, "a killed server still answers");
    server.restart().await?;
    assert_eq!(read_project(&pool).await?, expected());
    Ok(())
}

#[tokio::test]
async fn dropping_the_server_ends_it_and_deletes_its_cluster() -> anyhow::Result<()> {
    let server = PostgresServer::start(PostgresOptions::default()).await?;
    let url = server.create_database("scratch").await?;
    connect(&url).await?.simple_query("SELECT 1").await?;
    let dir = server.dir().to_owned();
    assert!(dir.join("data/PG_VERSION").is_file());
    drop(server);
    assert!(!dir.exists(), "{} outlived its server", dir.display());
    assert!(
        tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .is_err()
    );
    Ok(())
}

#[tokio::test]
async fn a_kept_dir_is_started_again_with_its_data() -> anyhow::Result<()> {
    let kept = tempfile::tempdir()?;
    let options = PostgresOptions {
        dir: Some(kept.path().join("cluster")),
        port: None,
    };
    let server = PostgresServer::start(options.clone()).await?;
    let url = server.create_webapp_database("webapp").await?;
    fill(&url).await?;
    drop(server);

    let server = PostgresServer::start(options).await?;
    let pool = Pool::builder(Manager::new(
        server.database_url("webapp").parse()?,
        tokio_postgres::NoTls,
    ))
    .build()?;
    assert_eq!(read_project(&pool).await?, expected());
    Ok(())
}

#[tokio::test]
async fn the_web_apps_keys_and_indexes_carry_prismas_names() -> anyhow::Result<()> {
    let server = PostgresServer::start(PostgresOptions::default()).await?;
    let client = connect(&server.create_webapp_database("webapp").await?).await?;
    let names = |sql: &'static str| {
        let client = &client;
        async move {
            let rows = client.query(sql, &[]).await?;
            anyhow::Ok(
                rows.iter()
                    .map(|r| r.get::<_, String>(0))
                    .collect::<Vec<_>>(),
            )
        }
    };
    let constraints = names(
        "SELECT conname::text FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1",
    )
    .await?;
    assert_eq!(
        constraints,
        [
            "images_pkey",
            "images_projectId_fkey",
            "project_shares_pkey",
            "project_shares_projectId_fkey",
            "projects_pkey",
            "projects_userId_fkey",
            "segmentations_imageId_fkey",
            "segmentations_pkey",
            "users_pkey",
        ]
    );
    let indexes = names(
        "SELECT indexname::text FROM pg_indexes WHERE schemaname = 'public' AND indexname NOT LIKE '%_pkey' ORDER BY 1",
    )
    .await?;
    assert_eq!(
        indexes,
        [
            "images_projectId_displayOrder_idx",
            "images_projectId_segmentationStatus_idx",
            "project_shares_email_status_idx",
            "project_shares_projectId_status_idx",
            "project_shares_shareToken_key",
            "projects_userId_updatedAt_idx",
            "segmentations_imageId_key",
            "users_email_key",
        ]
    );
    Ok(())
}
