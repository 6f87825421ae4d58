//! The web app's database as a project source (SPEC §10), against a private PostgreSQL cluster
//! filled as the web app fills it.

use std::path::Path;
use std::time::{Duration, Instant};

use cellport_core::{ImageId, ImageRecord, Point, Polygon, PolygonKind, ProjectId, UserId, Viewer};
use cellport_io::{PostgresProjectSource, ProjectSource, SourceError};
use cellport_testkit::webapp::{self, NewImage, ShareStatus};
use cellport_testkit::{PostgresOptions, PostgresServer};
use time::OffsetDateTime;
use time::macros::datetime;
use tokio::io::AsyncReadExt;

const ANA: &str = "a1000000-0000-4000-8000-00000000000a";
const BOB: &str = "a1000000-0000-4000-8000-00000000000b";
const CLEO: &str = "a1000000-0000-4000-8000-00000000000c";
const DAN: &str = "a1000000-0000-4000-8000-00000000000d";
const EVE: &str = "a1000000-0000-4000-8000-00000000000e";
const FAY: &str = "a1000000-0000-4000-8000-00000000000f";

const PROJECT: &str = "b1000000-0000-4000-8000-000000000001";
const OTHER_PROJECT: &str = "b1000000-0000-4000-8000-000000000002";

/// A web app database, a writer on it, and the source reading it.
struct Webapp {
    server: PostgresServer,
    url: String,
    db: tokio_postgres::Client,
    uploads: tempfile::TempDir,
    source: PostgresProjectSource,
}

async fn webapp() -> anyhow::Result<Webapp> {
    let server = PostgresServer::start(PostgresOptions::default()).await?;
    let url = server.create_webapp_database("webapp").await?;
    let db = webapp::connect(&url).await?;
    let uploads = tempfile::tempdir()?;
    let source = PostgresProjectSource::connect(&url, uploads.path().to_owned())?;
    Ok(Webapp {
        server,
        url,
        db,
        uploads,
        source,
    })
}

impl Webapp {
    /// Ana's project with her account.
    async fn with_project(self, id: &str) -> anyhow::Result<Webapp> {
        webapp::insert_user(&self.db, ANA, "ana@example.org").await?;
        webapp::insert_project(
            &self.db,
            id,
            "Spheroids",
            ANA,
            datetime!(2024-03-01 9:00 UTC),
        )
        .await?;
        Ok(self)
    }
}

fn project_id(id: &str) -> ProjectId {
    id.parse().unwrap()
}

fn user(id: &str) -> UserId {
    id.parse().unwrap()
}

fn viewer(id: &str, email: Option<&str>) -> Viewer {
    Viewer {
        user: user(id),
        email: email.map(str::to_owned),
    }
}

#[tokio::test]
async fn owners_and_accepted_shares_see_a_project_and_make_its_members() -> anyhow::Result<()> {
    let app = webapp().await?;
    let db = &app.db;
    for (id, email) in [
        (ANA, "ana@example.org"),
        (BOB, "bob@example.org"),
        (CLEO, "Cleo@Example.org"),
        (DAN, "dan@example.org"),
        (EVE, "eve@example.org"),
        (FAY, "fay@home.example"),
    ] {
        webapp::insert_user(db, id, email).await?;
    }
    let created = datetime!(2024-03-02 8:00 UTC);
    webapp::insert_project(db, PROJECT, "Spheroids, week 3", ANA, created).await?;
    let share = |with: Option<&'static str>, email: Option<&'static str>, status| {
        webapp::insert_share(db, PROJECT, with, email, status)
    };
    share(Some(BOB), None, ShareStatus::Accepted).await?;
    // Bob again by address: still one member.
    share(None, Some("BOB@example.org"), ShareStatus::Accepted).await?;
    share(None, Some("cleo@example.ORG"), ShareStatus::Accepted).await?;
    share(Some(DAN), None, ShareStatus::Pending).await?;
    share(None, Some("dan@example.org"), ShareStatus::Pending).await?;
    share(Some(EVE), None, ShareStatus::Revoked).await?;
    share(None, Some("eve@example.org"), ShareStatus::Revoked).await?;
    // An address no account has: Fay's token carries it, her account another.
    share(None, Some("Fay@Lab.example"), ShareStatus::Accepted).await?;
    // The owner shared with herself: not a member.
    share(None, Some("ana@example.org"), ShareStatus::Accepted).await?;
    for (name, is_video_container) in [("a.png", false), ("b.png", false), ("clip.mp4", true)] {
        let image = NewImage {
            is_video_container,
            ..NewImage::new(PROJECT, name)
        };
        webapp::insert_image(db, &image).await?;
    }
    // Two more of Ana's: one older (first in her list), two made at the same time (id decides).
    let older = "b1000000-0000-4000-8000-000000000000";
    webapp::insert_project(db, older, "Older", ANA, datetime!(2024-01-01 0:00 UTC)).await?;
    let same_time = datetime!(2024-05-01 0:00 UTC);
    let (later_b, later_a) = (
        "b1000000-0000-4000-8000-00000000000b",
        "b1000000-0000-4000-8000-00000000000a",
    );
    webapp::insert_project(db, later_b, "Later B", ANA, same_time).await?;
    webapp::insert_project(db, later_a, "Later A", ANA, same_time).await?;
    // Bob's own project, shared with no one.
    webapp::insert_project(db, OTHER_PROJECT, "Bob's", BOB, created).await?;

    let source = &app.source;
    let project = source.project(&project_id(PROJECT)).await?.unwrap();
    assert_eq!(project.id, project_id(PROJECT));
    assert_eq!(project.name, "Spheroids, week 3");
    assert_eq!(project.owner, user(ANA));
    assert_eq!(project.members, [user(BOB), user(CLEO)]);
    assert_eq!(project.scale, None);
    assert_eq!(project.image_count, 2);
    assert_eq!(project.created_at, created);
    assert_eq!(
        source.project(&project_id(later_a)).await?.unwrap().members,
        []
    );

    let expected = &project;
    let check = |who: Viewer, sees: bool| async move {
        let found = source.visible_project(&project_id(PROJECT), &who).await?;
        assert_eq!(found.is_some(), sees, "{who:?}");
        if let Some(found) = found {
            assert_eq!(found, *expected);
        }
        anyhow::Ok(())
    };
    check(viewer(ANA, None), true).await?;
    check(viewer(BOB, None), true).await?;
    check(viewer(CLEO, None), true).await?;
    check(viewer(FAY, Some("fay@lab.EXAMPLE")), true).await?;
    check(viewer(FAY, Some("fay@home.example")), false).await?;
    check(viewer(FAY, None), false).await?;
    check(viewer(DAN, Some("dan@example.org")), false).await?;
    check(viewer(EVE, Some("eve@example.org")), false).await?;
    // The token's address counts as its holder's: a share by address opens the project to it.
    check(viewer("stranger", Some("bob@example.org")), true).await?;
    check(viewer("stranger", Some("nobody@example.org")), false).await?;

    let listed = |who: Viewer| async move {
        let projects = source.projects_visible_to(&who).await?;
        anyhow::Ok(
            projects
                .into_iter()
                .map(|p| p.id.to_string())
                .collect::<Vec<_>>(),
        )
    };
    assert_eq!(
        listed(viewer(ANA, None)).await?,
        [older, PROJECT, later_a, later_b]
    );
    assert_eq!(listed(viewer(BOB, None)).await?, [PROJECT, OTHER_PROJECT]);
    assert_eq!(listed(viewer(CLEO, None)).await?, [PROJECT]);
    assert_eq!(
        listed(viewer(FAY, Some("FAY@lab.example"))).await?,
        [PROJECT]
    );
    assert!(
        listed(viewer(DAN, Some("dan@example.org")))
            .await?
            .is_empty()
    );
    assert!(listed(viewer(EVE, None)).await?.is_empty());

    assert_eq!(source.project(&project_id("no-such-project")).await?, None);
    let missing = project_id("b1000000-0000-4000-8000-0000000000ff");
    assert_eq!(source.project(&missing).await?, None);
    assert_eq!(
        source.visible_project(&missing, &viewer(ANA, None)).await?,
        None
    );
    Ok(())
}

/// Images inserted out of order, named by their place in the project order.
fn ordered_images() -> Vec<NewImage> {
    let image =
        |name: &str, display_order: Option<i32>, created_at: OffsetDateTime, id: &str| NewImage {
            id: id.to_owned(),
            display_order,
            created_at,
            ..NewImage::new(PROJECT, name)
        };
    let t = |seconds: i64| datetime!(2024-03-01 10:00 UTC) + time::Duration::seconds(seconds);
    vec![
        image("7.png", None, t(5), "c0000000-0000-4000-8000-000000000001"),
        image(
            "3.png",
            Some(1),
            t(1),
            "c0000000-0000-4000-8000-000000000003",
        ),
        image(
            "1.png",
            Some(-2),
            t(9),
            "c0000000-0000-4000-8000-000000000009",
        ),
        // Same display order and creation time: the id decides.
        image(
            "2.png",
            Some(1),
            t(1),
            "c0000000-0000-4000-8000-000000000002",
        ),
        image(
            "4.png",
            Some(1),
            t(2),
            "c0000000-0000-4000-8000-000000000000",
        ),
        image(
            "5.png",
            Some(40),
            t(0),
            "c0000000-0000-4000-8000-000000000008",
        ),
        image("8.png", None, t(5), "c0000000-0000-4000-8000-000000000007"),
        image("6.png", None, t(4), "c0000000-0000-4000-8000-000000000006"),
        NewImage {
            is_video_container: true,
            ..image(
                "clip.mp4",
                Some(0),
                t(0),
                "c0000000-0000-4000-8000-000000000005",
            )
        },
    ]
}

fn is_query_string_safe(cursor: &str) -> bool {
    cursor.len() <= 200
        && cursor
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._~-".contains(&b))
}

#[tokio::test]
async fn images_come_in_project_order_and_every_page_size_reads_them_alike() -> anyhow::Result<()> {
    let app = webapp().await?.with_project(PROJECT).await?;
    let images = ordered_images();
    let (first_half, second_half) = images.split_at(4);
    // Both ways of writing: row by row, and the bulk copy.
    for image in first_half {
        webapp::insert_image(&app.db, image).await?;
    }
    webapp::insert_images(&app.db, second_half).await?;
    let project = project_id(PROJECT);
    let source = &app.source;

    let whole = source.image_page(&project, None, 100).await?;
    assert_eq!(whole.next, None);
    let names: Vec<&str> = whole.images.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "1.png", "2.png", "3.png", "4.png", "5.png", "6.png", "7.png", "8.png"
        ]
    );
    let ids: Vec<ImageId> = whole.images.iter().map(|i| i.id.clone()).collect();

    for limit in 1..=9 {
        let mut paged = Vec::new();
        let mut paged_ids = Vec::new();
        let (mut cursor, mut id_cursor) = (None::<String>, None::<String>);
        for _ in 0..20 {
            let page = source
                .image_page(&project, cursor.as_deref(), limit)
                .await?;
            let id_page = source
                .image_id_page(&project, id_cursor.as_deref(), limit)
                .await?;
            assert!(page.images.len() <= limit);
            assert_eq!(
                page.images.iter().map(|i| &i.id).collect::<Vec<_>>(),
                id_page.ids.iter().collect::<Vec<_>>()
            );
            assert_eq!(page.next, id_page.next, "both kinds of page end alike");
            paged.extend(page.images);
            paged_ids.extend(id_page.ids);
            match page.next {
                Some(next) => {
                    assert!(is_query_string_safe(&next), "{next:?}");
                    cursor = Some(next);
                    id_cursor = id_page.next;
                }
                None => break,
            }
        }
        assert_eq!(paged, whole.images, "pages of {limit}");
        assert_eq!(paged_ids, ids, "id pages of {limit}");
    }

    // A full last page says it is the last.
    assert_eq!(source.image_id_page(&project, None, 8).await?.next, None);
    assert_eq!(
        source.image_id_page(&project, Some(""), 100).await?.ids,
        ids
    );
    let empty = source.image_id_page(&project, None, 0).await?;
    assert!(empty.ids.is_empty());
    assert!(empty.next.is_some());

    for bad in ["7", "not a cursor", "n~abc~x", "1~2~../x"] {
        let page = source.image_page(&project, Some(bad), 10).await;
        assert!(
            matches!(page, Err(SourceError::BadCursor(ref c)) if c == bad),
            "{page:?}"
        );
        let id_page = source.image_id_page(&project, Some(bad), 10).await;
        assert!(
            matches!(id_page, Err(SourceError::BadCursor(_))),
            "{id_page:?}"
        );
    }

    let nothing = source
        .image_page(&project_id(OTHER_PROJECT), None, 10)
        .await?;
    assert_eq!(nothing, Default::default());
    Ok(())
}

fn polygon(kind: PolygonKind, points: &[(f64, f64)]) -> Polygon {
    Polygon {
        kind,
        points: points.iter().map(|&(x, y)| Point { x, y }).collect(),
    }
}

#[tokio::test]
async fn polygons_and_sizes_are_read_leniently_with_warnings() -> anyhow::Result<()> {
    let app = webapp().await?.with_project(PROJECT).await?;
    let db = &app.db;
    let embedding = "QUJD".repeat(250_000);
    let polygons = format!(
        r##"[
        {{"id":"p1","type":"external","class":"spheroid","parent_id":null,"confidence":0.98,
          "area":12.5,"partClass":"core","instanceId":3,"trackId":"t1","color":"#ff0000",
          "_embedding":"{embedding}","points":[{{"x":10.5,"y":4}},{{"x":20,"y":4}},{{"x":15,"y":12.25}}]}},
        {{"id":"p2","type":"internal","points":[{{"x":14,"y":6,"z":1}},{{"x":16,"y":6}},{{"x":15,"y":8}}]}},
        {{"id":"p3","points":[{{"x":0,"y":0}},{{"x":1,"y":0}},{{"x":0,"y":1}}]}},
        {{"id":"l1","type":"external","geometry":"polyline","points":[{{"x":0,"y":0}},{{"x":5,"y":5}}]}},
        {{"id":"l2","geometry":"polyline","points":"whatever"}},
        {{"id":"c1","type":"circle","points":[{{"x":0,"y":0}}]}},
        {{"id":"u1","type":"external","points":"nope"}},
        {{"id":"u2","type":"internal"}},
        42
    ]"##
    );
    let image =
        |name: &str, width: Option<i32>, height: Option<i32>, file_size: Option<i64>| NewImage {
            width,
            height,
            file_size,
            display_order: Some(0),
            ..NewImage::new(PROJECT, name)
        };
    let rows = [
        image("a_segmented.png", Some(100), Some(80), Some(1234)),
        image("b_row_size.png", Some(320), Some(240), None),
        image("c_half_size.png", Some(50), Some(40), Some(7)),
        image("d_unknown.png", None, Some(100), None),
        image("e_not_json.png", Some(10), Some(10), None),
        image("f_not_array.png", Some(10), Some(10), None),
    ];
    for (n, row) in rows.iter().enumerate() {
        let created_at = datetime!(2024-03-01 10:00 UTC) + time::Duration::seconds(n as i64);
        webapp::insert_image(
            db,
            &NewImage {
                created_at,
                ..row.clone()
            },
        )
        .await?;
    }
    let segmentations = [
        (0, polygons.as_str(), Some(640), Some(480)),
        (1, "[]", None, None),
        (2, "[]", Some(999), None),
        (4, "[{\"points\": [", Some(10), Some(10)),
        (5, r#"{"polygons": []}"#, Some(10), Some(10)),
    ];
    for (n, text, width, height) in segmentations {
        webapp::insert_segmentation(db, &rows[n].id, text, width, height).await?;
    }

    let project = project_id(PROJECT);
    let page = app.source.image_page(&project, None, 10).await?;
    let read = &page.images;
    assert_eq!(read.len(), 6);

    let segmented = &read[0];
    assert_eq!(segmented.name, "a_segmented.png");
    assert_eq!((segmented.width, segmented.height), (640, 480));
    assert_eq!(segmented.size_bytes, 1234);
    assert_eq!(
        segmented.polygons,
        [
            polygon(
                PolygonKind::External,
                &[(10.5, 4.0), (20.0, 4.0), (15.0, 12.25)]
            ),
            polygon(
                PolygonKind::Internal,
                &[(14.0, 6.0), (16.0, 6.0), (15.0, 8.0)]
            ),
            polygon(PolygonKind::External, &[(0.0, 0.0), (1.0, 0.0), (0.0, 1.0)]),
        ]
    );
    assert_eq!(
        segmented.warnings,
        [
            "image a_segmented.png: 2 polylines skipped (not polygons)",
            "image a_segmented.png: 1 object skipped (unknown type \"circle\")",
            "image a_segmented.png: 3 polygons skipped (unreadable points)",
        ]
    );

    let size = |image: &ImageRecord| (image.width, image.height, image.size_bytes);
    assert_eq!(size(&read[1]), (320, 240, 0));
    assert_eq!(size(&read[2]), (50, 40, 7));
    assert_eq!(size(&read[3]), (0, 0, 0));
    for plain in &read[1..4] {
        assert!(
            plain.polygons.is_empty() && plain.warnings.is_empty(),
            "{plain:?}"
        );
    }
    for (broken, name) in read[4..].iter().zip(["e_not_json.png", "f_not_array.png"]) {
        assert!(broken.polygons.is_empty());
        let [warning] = broken.warnings.as_slice() else {
            panic!("one warning expected: {:?}", broken.warnings);
        };
        let prefix = format!("image {name}: segmentation unreadable (");
        assert!(
            warning.starts_with(&prefix) && warning.ends_with("): no polygons"),
            "{warning}"
        );
    }

    // By id: in the order asked, what is no longer an image of the project left out.
    let deleted = webapp::insert_image(db, &NewImage::new(PROJECT, "deleted.png")).await?;
    db.execute("DELETE FROM images WHERE id = $1", &[&deleted])
        .await?;
    let container = webapp::insert_image(
        db,
        &NewImage {
            is_video_container: true,
            ..NewImage::new(PROJECT, "clip.mp4")
        },
    )
    .await?;
    webapp::insert_user(db, BOB, "bob@example.org").await?;
    webapp::insert_project(db, OTHER_PROJECT, "Bob's", BOB, OffsetDateTime::now_utc()).await?;
    let elsewhere = webapp::insert_image(db, &NewImage::new(OTHER_PROJECT, "x.png")).await?;
    let asked: Vec<ImageId> = [
        read[3].id.as_str(),
        &deleted,
        read[0].id.as_str(),
        &container,
        &elsewhere,
        read[4].id.as_str(),
        read[0].id.as_str(),
    ]
    .iter()
    .map(|id| id.parse().unwrap())
    .collect();
    let by_id = app.source.images_by_ids(&project, &asked).await?;
    assert_eq!(by_id, [read[3].clone(), read[0].clone(), read[4].clone()]);
    assert!(app.source.images_by_ids(&project, &[]).await?.is_empty());
    Ok(())
}

async fn read_all(source: &PostgresProjectSource, image: &ImageRecord) -> anyhow::Result<Vec<u8>> {
    let mut reader = source.open_image(&project_id(PROJECT), image).await?;
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).await?;
    Ok(bytes)
}

#[tokio::test]
async fn image_files_open_only_inside_the_uploads_directory() -> anyhow::Result<()> {
    let app = webapp().await?.with_project(PROJECT).await?;
    let uploads = app.uploads.path();
    let outside = tempfile::tempdir()?;
    let secret = outside.path().join("secret.png");
    std::fs::write(&secret, b"not yours")?;
    let originals = uploads.join(ANA).join(PROJECT).join("originals");
    std::fs::create_dir_all(&originals)?;
    std::fs::write(originals.join("1709287200000_good.png"), b"\x89PNG good")?;
    std::os::unix::fs::symlink(&secret, originals.join("link.png"))?;
    std::fs::create_dir(originals.join("a_dir.png"))?;

    let in_originals = |file: &str| format!("{ANA}/{PROJECT}/originals/{file}");
    let cases = [
        ("good.png", in_originals("1709287200000_good.png")),
        ("missing.png", in_originals("missing.png")),
        ("dotdot.png", format!("{ANA}/../../{}", secret.display())),
        (
            "sneaky.png",
            in_originals("../originals/1709287200000_good.png"),
        ),
        ("absolute.png", secret.display().to_string()),
        ("link.png", in_originals("link.png")),
        ("dir.png", in_originals("a_dir.png")),
    ];
    let mut ids: Vec<ImageId> = Vec::new();
    for (name, original_path) in &cases {
        let image = NewImage {
            original_path: original_path.clone(),
            ..NewImage::new(PROJECT, name)
        };
        ids.push(webapp::insert_image(&app.db, &image).await?.parse()?);
    }
    let images = app.source.images_by_ids(&project_id(PROJECT), &ids).await?;
    assert_eq!(read_all(&app.source, &images[0]).await?, b"\x89PNG good");

    let refusal = |image: &ImageRecord| {
        let source = &app.source;
        let image = image.clone();
        async move {
            match source.open_image(&project_id(PROJECT), &image).await {
                Err(SourceError::ImageFileMissing {
                    image: name,
                    reason,
                }) => {
                    assert_eq!(name, image.name);
                    reason
                }
                Err(other) => panic!("{}: {other}", image.name),
                Ok(_) => panic!("{} was opened", image.name),
            }
        }
    };
    let leaves = "path leaves the uploads directory";
    assert_eq!(refusal(&images[1]).await, "no such file");
    assert_eq!(refusal(&images[2]).await, leaves);
    assert_eq!(refusal(&images[3]).await, leaves);
    assert_eq!(refusal(&images[4]).await, leaves);
    assert_eq!(refusal(&images[5]).await, leaves);
    assert_eq!(refusal(&images[6]).await, "not a file");

    // An image deleted since its record was read.
    app.db
        .execute(
            "DELETE FROM images WHERE id = $1",
            &[&images[0].id.as_str()],
        )
        .await?;
    assert_eq!(
        refusal(&images[0]).await,
        "the image is no longer in the project"
    );
    Ok(())
}

/// How long a call took and what it answered.
async fn timed<T>(call: impl Future<Output = T>) -> (Duration, T) {
    let started = Instant::now();
    let answer = call.await;
    (started.elapsed(), answer)
}

fn assert_unavailable<T: std::fmt::Debug>(answer: Result<T, SourceError>, took: Duration) {
    match answer {
        Err(e @ SourceError::Unavailable(_)) => assert!(e.is_transient()),
        other => panic!("expected unavailable, got {other:?}"),
    }
    assert!(
        took < Duration::from_secs(5),
        "an outage took {took:?} to tell"
    );
}

#[tokio::test]
async fn an_outage_answers_unavailable_at_once_and_a_restart_mends_it() -> anyhow::Result<()> {
    let mut app = webapp().await?.with_project(PROJECT).await?;
    webapp::insert_image(&app.db, &NewImage::new(PROJECT, "a.png")).await?;
    let project = project_id(PROJECT);
    let ana = viewer(ANA, None);
    assert!(app.source.visible_project(&project, &ana).await?.is_some());

    app.server.stop().await?;
    let (took, answer) = timed(app.source.visible_project(&project, &ana)).await;
    assert_unavailable(answer, took);
    let (took, answer) = timed(app.source.image_page(&project, None, 10)).await;
    assert_unavailable(answer, took);
    let (took, answer) = timed(app.source.projects_visible_to(&ana)).await;
    assert_unavailable(answer, took);

    // A source made while the database is down starts, and answers once it is back.
    let late = PostgresProjectSource::connect(&app.url, app.uploads.path().to_owned())?;
    let (took, answer) = timed(late.project(&project)).await;
    assert_unavailable(answer, took);

    app.server.restart().await?;
    assert!(app.source.visible_project(&project, &ana).await?.is_some());
    assert_eq!(
        app.source
            .image_id_page(&project, None, 10)
            .await?
            .ids
            .len(),
        1
    );
    assert_eq!(late.project(&project).await?.unwrap().image_count, 1);
    Ok(())
}

#[tokio::test]
async fn a_url_that_does_not_parse_is_refused_without_echoing_it() {
    let refused = PostgresProjectSource::connect(
        "postgres://cellport:hunter2@127.0.0.1:notaport/webapp",
        Path::new("/nonexistent").to_owned(),
    );
    match refused {
        Err(SourceError::Unavailable(message)) => assert!(!message.contains("hunter2")),
        other => panic!("{other:?}"),
    }
}
