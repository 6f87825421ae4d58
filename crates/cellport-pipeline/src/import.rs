//! Filling the built-in store: a directory of images plus a COCO file becomes a project.
//!
//! Import keeps what it is given: polygons are stored as they are (degenerate ones included;
//! the export leaves them out with a warning), image order is the COCO file's order,
//! followed by any other image files of the directory in name order.

use std::collections::{HashMap, HashSet};
use std::path::{Component, Path, PathBuf};

use cellport_core::{
    ImageId, ImageRecord, Point, Polygon, PolygonKind, Project, ProjectId, UserId,
};
use serde::Deserialize;
use serde_json::Value;
use time::OffsetDateTime;

use cellport_io::source::{FileProjectStore, SourceError};

const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "tif", "tiff", "bmp"];

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read COCO file {path}: {source}")]
    ReadCoco {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("COCO file {path} is not valid COCO JSON: {source}")]
    ParseCoco {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("image {file_name:?} of the COCO file: {reason}")]
    BadImage { file_name: String, reason: String },
    #[error("cannot read images directory {path}: {source}")]
    ReadDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("project name must not be empty")]
    EmptyName,
    #[error("scale must be a positive finite number of micrometres per pixel, got {0}")]
    BadScale(f64),
    #[error(transparent)]
    Store(#[from] SourceError),
}

#[derive(Debug, Deserialize)]
struct CocoFile {
    images: Vec<CocoImage>,
    #[serde(default)]
    annotations: Vec<CocoAnnotation>,
    #[serde(default)]
    categories: Vec<CocoCategory>,
}

#[derive(Debug, Deserialize)]
struct CocoImage {
    id: Value,
    file_name: String,
    width: Option<u32>,
    height: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct CocoAnnotation {
    image_id: Value,
    #[serde(default)]
    category_id: Option<Value>,
    segmentation: Value,
    #[serde(default)]
    attributes: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct CocoCategory {
    id: Value,
    name: String,
}

/// What to import.
#[derive(Debug, Clone)]
pub struct ImportRequest {
    pub owner: UserId,
    pub name: String,
    pub scale: Option<f64>,
    pub images_dir: PathBuf,
    pub coco_file: PathBuf,
}

/// The new project and what import had to pass over.
#[derive(Debug)]
pub struct ImportReport {
    pub project: Project,
    pub warnings: Vec<String>,
}

fn id_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A COCO `file_name` is relative to the images directory; anything that climbs out of it is refused.
fn resolve_in(dir: &Path, file_name: &str) -> Option<PathBuf> {
    let rel = Path::new(file_name);
    rel.components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then(|| dir.join(rel))
}

fn read_dimensions(path: &Path) -> Option<(u32, u32)> {
    image::ImageReader::open(path)
        .ok()?
        .with_guessed_format()
        .ok()?
        .into_dimensions()
        .ok()
}

fn polygons_of(segmentation: &Value, kind: PolygonKind) -> Option<Vec<Polygon>> {
    let parts = segmentation.as_array()?;
    parts
        .iter()
        .map(|part| {
            let coords: Option<Vec<f64>> = part.as_array()?.iter().map(Value::as_f64).collect();
            let coords = coords?;
            Some(Polygon {
                kind,
                points: coords
                    .chunks_exact(2)
                    .map(|xy| Point { x: xy[0], y: xy[1] })
                    .collect(),
            })
        })
        .collect()
}

/// Imports a project into the store and returns it.
pub async fn import_project(
    store: &FileProjectStore,
    req: ImportRequest,
) -> Result<ImportReport, ImportError> {
    let name = req.name.trim().to_owned();
    if name.is_empty() {
        return Err(ImportError::EmptyName);
    }
    if let Some(s) = req.scale
        && !(s.is_finite() && s > 0.0)
    {
        return Err(ImportError::BadScale(s));
    }
    let raw = tokio::fs::read(&req.coco_file)
        .await
        .map_err(|source| ImportError::ReadCoco {
            path: req.coco_file.clone(),
            source,
        })?;
    let coco: CocoFile = serde_json::from_slice(&raw).map_err(|source| ImportError::ParseCoco {
        path: req.coco_file.clone(),
        source,
    })?;
    let mut warnings = Vec::new();

    let hole_categories: HashSet<String> = coco
        .categories
        .iter()
        .filter(|c| c.name == "cell_hole")
        .map(|c| id_text(&c.id))
        .collect();
    let mut polygons_by_image: HashMap<String, Vec<Polygon>> = HashMap::new();
    for (n, ann) in coco.annotations.iter().enumerate() {
        let is_hole = ann
            .category_id
            .as_ref()
            .is_some_and(|c| hole_categories.contains(&id_text(c)))
            || ann
                .attributes
                .as_ref()
                .and_then(|a| a.get("type"))
                .and_then(Value::as_str)
                == Some("internal");
        let kind = if is_hole {
            PolygonKind::Internal
        } else {
            PolygonKind::External
        };
        match polygons_of(&ann.segmentation, kind) {
            Some(polys) => polygons_by_image.entry(id_text(&ann.image_id)).or_default().extend(polys),
            None => warnings.push(format!(
                "annotation #{} of image {}: segmentation is not a polygon list (RLE is not imported): skipped",
                n + 1,
                id_text(&ann.image_id)
            )),
        }
    }

    let project_id = ProjectId::generate();
    let files_dir = store.project_dir(&project_id).join("files");
    tokio::fs::create_dir_all(&files_dir)
        .await
        .map_err(|source| SourceError::Io {
            path: files_dir.clone(),
            source,
        })?;

    let mut images = Vec::with_capacity(coco.images.len());
    let mut used_files = HashSet::new();
    let mut used_ids = HashSet::new();
    for img in &coco.images {
        let bad = |reason: String| ImportError::BadImage {
            file_name: img.file_name.clone(),
            reason,
        };
        let id: ImageId = id_text(&img.id).parse().map_err(|e| bad(format!("{e}")))?;
        if !used_ids.insert(id.clone()) {
            return Err(bad(format!("duplicate image id {id}")));
        }
        let path = resolve_in(&req.images_dir, &img.file_name)
            .ok_or_else(|| bad("file name leaves the images directory".into()))?;
        let (width, height) = match (read_dimensions(&path), img.width, img.height) {
            (Some(dims), _, _) => dims,
            (None, Some(w), Some(h)) => {
                warnings.push(format!(
                    "image {}: unreadable, keeping the COCO size {w}x{h}",
                    img.file_name
                ));
                (w, h)
            }
            (None, _, _) => {
                return Err(bad(
                    "unreadable and the COCO file gives no width/height".into()
                ));
            }
        };
        used_files.insert(path.clone());
        let polygons = polygons_by_image.remove(id.as_str()).unwrap_or_default();
        images.push(
            copy_image(
                store,
                &project_id,
                id,
                &img.file_name,
                &path,
                width,
                height,
                polygons,
            )
            .await?,
        );
    }
    for orphan in polygons_by_image.keys() {
        warnings.push(format!(
            "annotations refer to image id {orphan}, which the COCO file does not list: skipped"
        ));
    }

    // Image files of the directory that the COCO file does not name join the project without polygons.
    let mut extra = Vec::new();
    let mut dir = tokio::fs::read_dir(&req.images_dir)
        .await
        .map_err(|source| ImportError::ReadDir {
            path: req.images_dir.clone(),
            source,
        })?;
    while let Some(entry) = dir
        .next_entry()
        .await
        .map_err(|source| ImportError::ReadDir {
            path: req.images_dir.clone(),
            source,
        })?
    {
        let path = entry.path();
        let is_image = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
        if is_image && path.is_file() && !used_files.contains(&path) {
            extra.push(path);
        }
    }
    extra.sort();
    let mut next_id = images.len() + 1;
    for path in extra {
        let file_name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("image")
            .to_owned();
        let Some((width, height)) = read_dimensions(&path) else {
            warnings.push(format!(
                "{file_name}: not in the COCO file and unreadable: skipped"
            ));
            continue;
        };
        let id = loop {
            let candidate: ImageId = format!("img-{next_id}").parse().expect("valid id");
            next_id += 1;
            if used_ids.insert(candidate.clone()) {
                break candidate;
            }
        };
        images.push(
            copy_image(
                store,
                &project_id,
                id,
                &file_name,
                &path,
                width,
                height,
                Vec::new(),
            )
            .await?,
        );
    }

    let project = Project {
        id: project_id.clone(),
        name,
        owner: req.owner,
        members: Vec::new(),
        scale: req.scale,
        image_count: images.len() as u64,
        created_at: OffsetDateTime::now_utc(),
    };
    store.save_images(&project_id, &images).await?;
    // The project file goes last: a project is visible only once its images are complete.
    store.save_project(&project).await?;
    Ok(ImportReport { project, warnings })
}

#[allow(clippy::too_many_arguments)]
async fn copy_image(
    store: &FileProjectStore,
    project: &ProjectId,
    id: ImageId,
    name: &str,
    from: &Path,
    width: u32,
    height: u32,
    polygons: Vec<Polygon>,
) -> Result<ImageRecord, ImportError> {
    let to = store.image_path(project, &id);
    let size_bytes = tokio::fs::copy(from, &to)
        .await
        .map_err(|source| ImportError::BadImage {
            file_name: name.to_owned(),
            reason: format!("cannot copy {}: {source}", from.display()),
        })?;
    Ok(ImageRecord {
        id,
        name: name.to_owned(),
        width,
        height,
        size_bytes,
        polygons,
        warnings: Vec::new(),
    })
}
