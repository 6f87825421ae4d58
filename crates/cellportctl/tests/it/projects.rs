//! `cellportctl project …` on the web app's database: `list` reads it, `import` and `share`
//! refuse it (the web app owns its projects).

use std::process::Output;

use cellport_testkit::webapp::{self, ShareStatus};
use cellport_testkit::{PostgresOptions, PostgresServer};

async fn ctl(args: &[&str], source: &str) -> anyhow::Result<Output> {
    let data = tempfile::tempdir()?;
    Ok(
        tokio::process::Command::new(env!("CARGO_BIN_EXE_cellportctl"))
            .args(args)
            .env("CELLPORT_PROJECT_SOURCE", source)
            .env("CELLPORT_DATA_DIR", data.path())
            .env("CELLPORT_UPLOADS_DIR", data.path())
            .env("CELLPORT_REDIS_URL", "redis://127.0.0.1:1")
            .env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LIB_BACKTRACE")
            .output()
            .await?,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn project_commands_on_the_web_apps_database() -> anyhow::Result<()> {
    let server = PostgresServer::start(PostgresOptions::default()).await?;
    let url = server.create_webapp_database("webapp").await?;
    let client = webapp::connect(&url).await?;
    for (user, project, title) in [("ana", "p-ana", "Plate A"), ("ben", "p-ben", "Plate B")] {
        webapp::insert_user(&client, user, &format!("{user}@example.org")).await?;
        webapp::insert_project(
            &client,
            project,
            title,
            user,
            time::OffsetDateTime::now_utc(),
        )
        .await?;
    }
    webapp::insert_image(&client, &webapp::NewImage::new("p-ana", "a.png")).await?;
    webapp::insert_share(&client, "p-ben", Some("ana"), None, ShareStatus::Accepted).await?;

    let all = ctl(&["project", "list"], &url).await?;
    assert!(all.status.success(), "{all:?}");
    let listed = String::from_utf8(all.stdout)?;
    assert_eq!(listed.lines().count(), 2, "{listed}");
    assert!(listed.contains("p-ana\tana\tPlate A\t1 images"), "{listed}");

    let ben = ctl(&["project", "list", "--owner", "ben"], &url).await?;
    let listed = String::from_utf8(ben.stdout)?;
    assert_eq!(
        listed.lines().collect::<Vec<_>>(),
        ["p-ben\tben\tPlate B\t0 images"]
    );
    let ana = ctl(&["project", "list", "--owner", "ana"], &url).await?;
    assert_eq!(String::from_utf8(ana.stdout)?.lines().count(), 2);

    for args in [
        &["project", "share", "p-ana", "--with", "ben"][..],
        &[
            "project", "import", "--owner", "ana", "--name", "x", "--images", ".", "--coco", "x",
        ],
    ] {
        let refused = ctl(args, &url).await?;
        assert!(!refused.status.success());
        let stderr = String::from_utf8(refused.stderr)?;
        assert!(stderr.contains("the web app owns its projects"), "{stderr}");
        assert!(!stderr.contains("\n\n"), "one clear message: {stderr}");
    }
    Ok(())
}
