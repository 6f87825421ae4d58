//! Project sources: where projects, images and polygons come from.
//!
//! [`ProjectSource`] is the seam; [`FileProjectStore`] is the built-in implementation that
//! `cellportctl project import` fills, laid out under `<data dir>/projects/<project id>/`:
//! `project.json` (the [`Project`]), `images.json` (the [`ImageRecord`]s in project order)
//! and `files/<image id>` (the original bytes).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use cellport_core::{ImageId, ImageRecord, Project, ProjectId, UserId, Viewer};
use futures::future::BoxFuture;
use tokio::fs::File;
use tokio::io::AsyncRead;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("project {0} not found")]
    ProjectNotFound(ProjectId),
    #[error("project store io at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("project store file {path} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The image's file is not there, or may not be opened (a path that leaves the uploads
    /// directory): the export goes on without it.
    #[error("the file of image {image} is not available: {reason}")]
    ImageFileMissing { image: String, reason: String },
    /// A paging cursor this source did not hand out.
    #[error("not a cursor of this listing: {0:?}")]
    BadCursor(String),
    /// The database could not be reached or failed: worth retrying.
    #[error("the project database is unavailable: {0}")]
    Unavailable(String),
    /// The database answered with something this source cannot read.
    #[error("the project database holds unreadable data: {0}")]
    Invalid(String),
}

impl SourceError {
    /// Whether trying again later may succeed (an outage, a failing disk), as opposed to a
    /// missing project or a corrupt record.
    pub fn is_transient(&self) -> bool {
        matches!(self, SourceError::Io { .. } | SourceError::Unavailable(_))
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SourceError + '_ {
    move |source| SourceError::Io {
        path: path.to_owned(),
        source,
    }
}

/// An image's original bytes, streamed: a file on disk for every source today, but a source
/// is a database plus a directory, so callers see only a reader.
pub type ImageReader = Box<dyn AsyncRead + Send + Unpin>;

/// One page of a project's images, in project order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImagePage {
    pub images: Vec<ImageRecord>,
    /// The cursor of the next page; `None` on the last one.
    pub next: Option<String>,
}

/// One page of a project's image ids, in project order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageIdPage {
    pub ids: Vec<ImageId>,
    pub next: Option<String>,
}

/// Where projects come from. Object-safe so services hold an `Arc<dyn ProjectSource>`.
///
/// A project's images are read a page at a time: a project may hold 100,000 of them, and no
/// caller holds them all with their polygons at once.
pub trait ProjectSource: Send + Sync + 'static {
    /// The project, or `None` when it does not exist. Its `members` are everyone besides the
    /// owner who may see it: the audience of its exports, resolved by the source.
    fn project<'a>(
        &'a self,
        id: &'a ProjectId,
    ) -> BoxFuture<'a, Result<Option<Project>, SourceError>>;

    /// The project when `viewer` may see it; `None` when it does not exist or is not theirs.
    fn visible_project<'a>(
        &'a self,
        id: &'a ProjectId,
        viewer: &'a Viewer,
    ) -> BoxFuture<'a, Result<Option<Project>, SourceError>>;

    /// Projects the viewer owns or that are shared with them, oldest first.
    fn projects_visible_to<'a>(
        &'a self,
        viewer: &'a Viewer,
    ) -> BoxFuture<'a, Result<Vec<Project>, SourceError>>;

    /// Up to `limit` images with their polygons, after `cursor` (`None`: from the first).
    fn image_page<'a>(
        &'a self,
        project: &'a ProjectId,
        cursor: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<ImagePage, SourceError>>;

    /// Up to `limit` image ids after `cursor`: what fixes a job's images, without polygons.
    fn image_id_page<'a>(
        &'a self,
        project: &'a ProjectId,
        cursor: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<ImageIdPage, SourceError>>;

    /// The named images of the project with their polygons, in the order named; an id that is
    /// no longer an image of the project is left out.
    fn images_by_ids<'a>(
        &'a self,
        project: &'a ProjectId,
        ids: &'a [ImageId],
    ) -> BoxFuture<'a, Result<Vec<ImageRecord>, SourceError>>;

    /// Opens an image's original bytes for streaming; [`SourceError::ImageFileMissing`] when
    /// the file is not there or may not be opened.
    fn open_image<'a>(
        &'a self,
        project: &'a ProjectId,
        image: &'a ImageRecord,
    ) -> BoxFuture<'a, Result<ImageReader, SourceError>>;
}

/// Image ids read per page by [`each_image_id`].
const IMAGE_ID_PAGE: usize = 5_000;

/// Visits every image id of a project in project order, a page at a time: what fixes a job's
/// images without holding the project's records.
pub async fn each_image_id(
    source: &dyn ProjectSource,
    project: &ProjectId,
    mut visit: impl FnMut(ImageId),
) -> Result<(), SourceError> {
    let mut cursor: Option<String> = None;
    loop {
        let page = source
            .image_id_page(project, cursor.as_deref(), IMAGE_ID_PAGE)
            .await?;
        page.ids.into_iter().for_each(&mut visit);
        match page.next {
            Some(next) => cursor = Some(next),
            None => return Ok(()),
        }
    }
}

/// The built-in project store: plain files under the data directory.
#[derive(Clone)]
pub struct FileProjectStore {
    root: PathBuf,
    /// The last image list read, while its file is unchanged: pages of one export read the
    /// same list many times.
    images_cache: Arc<Mutex<Option<CachedImages>>>,
}

/// A parsed `images.json` and what identifies the file it was read from.
struct CachedImages {
    path: PathBuf,
    modified: SystemTime,
    len: u64,
    images: Arc<Vec<ImageRecord>>,
}

impl std::fmt::Debug for FileProjectStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileProjectStore")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl FileProjectStore {
    pub fn new(data_dir: impl Into<PathBuf>) -> FileProjectStore {
        FileProjectStore {
            root: data_dir.into().join("projects"),
            images_cache: Arc::default(),
        }
    }

    /// The directory of one project's files (import writes into it).
    pub fn project_dir(&self, id: &ProjectId) -> PathBuf {
        // Ids are checked tokens (no separators, not `..`), so joining them is safe.
        self.root.join(id.as_str())
    }

    /// Where an image's original bytes live.
    pub fn image_path(&self, project: &ProjectId, image: &cellport_core::ImageId) -> PathBuf {
        self.project_dir(project).join("files").join(image.as_str())
    }

    async fn read_json<T: serde::de::DeserializeOwned>(
        path: &Path,
    ) -> Result<Option<T>, SourceError> {
        match tokio::fs::read(path).await {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|source| SourceError::Corrupt {
                        path: path.to_owned(),
                        source,
                    })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(path)(e)),
        }
    }

    /// Writes a JSON file atomically (temp file + rename) so readers never see half a file.
    async fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), SourceError> {
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(value).expect("project files serialize");
        tokio::fs::write(&tmp, &bytes).await.map_err(io_err(&tmp))?;
        tokio::fs::rename(&tmp, path).await.map_err(io_err(path))
    }

    /// Stores a project's image list, in project order.
    pub async fn save_images(
        &self,
        project: &ProjectId,
        images: &[ImageRecord],
    ) -> Result<(), SourceError> {
        Self::write_json(&self.project_dir(project).join("images.json"), &images).await
    }

    /// Stores a project's record; its images are saved first, so a listed project is whole.
    pub async fn save_project(&self, project: &Project) -> Result<(), SourceError> {
        let dir = self.project_dir(&project.id);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(io_err(&dir))?;
        Self::write_json(&dir.join("project.json"), project).await
    }

    /// Every project in the store, oldest first.
    pub async fn all_projects(&self) -> Result<Vec<Project>, SourceError> {
        self.scan(|_| true).await
    }

    async fn scan(&self, keep: impl Fn(&Project) -> bool) -> Result<Vec<Project>, SourceError> {
        let mut dirs = match tokio::fs::read_dir(&self.root).await {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&self.root)(e)),
        };
        let mut projects = Vec::new();
        while let Some(entry) = dirs.next_entry().await.map_err(io_err(&self.root))? {
            let path = entry.path().join("project.json");
            if let Some(p) = Self::read_json::<Project>(&path).await?
                && keep(&p)
            {
                projects.push(p);
            }
        }
        projects.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(projects)
    }

    /// Shares a project with another user; sharing twice is harmless.
    pub async fn share(&self, id: &ProjectId, with: UserId) -> Result<Project, SourceError> {
        let mut project = self
            .project(id)
            .await?
            .ok_or_else(|| SourceError::ProjectNotFound(id.clone()))?;
        if !project.is_visible_to(&with) {
            project.members.push(with);
            self.save_project(&project).await?;
        }
        Ok(project)
    }
}

/// A file store's cursor: the index of the next image, at most 19 decimal digits.
fn index_cursor(cursor: Option<&str>) -> Result<usize, SourceError> {
    match cursor {
        None | Some("") => Ok(0),
        Some(raw) if raw.len() <= 19 && raw.bytes().all(|b| b.is_ascii_digit()) => raw
            .parse()
            .map_err(|_| SourceError::BadCursor(raw.to_owned())),
        Some(raw) => Err(SourceError::BadCursor(raw.to_owned())),
    }
}

fn next_cursor(end: usize, total: usize) -> Option<String> {
    (end < total).then(|| end.to_string())
}

impl FileProjectStore {
    /// Every image of a project, in project order. The built-in store keeps them in one file,
    /// read whole and kept while it is unchanged (one project at a time), so the pages of an
    /// export parse it once; the database source reads pages from its tables instead.
    async fn all_images(&self, id: &ProjectId) -> Result<Arc<Vec<ImageRecord>>, SourceError> {
        let path = self.project_dir(id).join("images.json");
        let stamp = match tokio::fs::metadata(&path).await {
            Ok(meta) => meta.modified().ok().map(|m| (m, meta.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SourceError::ProjectNotFound(id.clone()));
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        if let Some((modified, len)) = stamp {
            let cache = self.images_cache.lock().expect("images cache");
            if let Some(c) = cache.as_ref()
                && c.path == path
                && c.modified == modified
                && c.len == len
            {
                return Ok(c.images.clone());
            }
        }
        let images: Arc<Vec<ImageRecord>> = Arc::new(
            Self::read_json(&path)
                .await?
                .ok_or_else(|| SourceError::ProjectNotFound(id.clone()))?,
        );
        if let Some((modified, len)) = stamp {
            *self.images_cache.lock().expect("images cache") = Some(CachedImages {
                path,
                modified,
                len,
                images: images.clone(),
            });
        }
        Ok(images)
    }
}

impl ProjectSource for FileProjectStore {
    fn project<'a>(
        &'a self,
        id: &'a ProjectId,
    ) -> BoxFuture<'a, Result<Option<Project>, SourceError>> {
        Box::pin(async move { Self::read_json(&self.project_dir(id).join("project.json")).await })
    }

    fn visible_project<'a>(
        &'a self,
        id: &'a ProjectId,
        viewer: &'a Viewer,
    ) -> BoxFuture<'a, Result<Option<Project>, SourceError>> {
        Box::pin(async move {
            Ok(self
                .project(id)
                .await?
                .filter(|p| p.is_visible_to(&viewer.user)))
        })
    }

    fn projects_visible_to<'a>(
        &'a self,
        viewer: &'a Viewer,
    ) -> BoxFuture<'a, Result<Vec<Project>, SourceError>> {
        Box::pin(self.scan(move |p| p.is_visible_to(&viewer.user)))
    }

    fn image_page<'a>(
        &'a self,
        project: &'a ProjectId,
        cursor: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<ImagePage, SourceError>> {
        Box::pin(async move {
            let start = index_cursor(cursor)?;
            let all = self.all_images(project).await?;
            let total = all.len();
            let images: Vec<ImageRecord> = all.iter().skip(start).take(limit).cloned().collect();
            let next = next_cursor(start + images.len(), total);
            Ok(ImagePage { images, next })
        })
    }

    fn image_id_page<'a>(
        &'a self,
        project: &'a ProjectId,
        cursor: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<ImageIdPage, SourceError>> {
        Box::pin(async move {
            let start = index_cursor(cursor)?;
            let all = self.all_images(project).await?;
            let ids: Vec<ImageId> = all
                .iter()
                .skip(start)
                .take(limit)
                .map(|i| i.id.clone())
                .collect();
            let next = next_cursor(start + ids.len(), all.len());
            Ok(ImageIdPage { ids, next })
        })
    }

    fn images_by_ids<'a>(
        &'a self,
        project: &'a ProjectId,
        ids: &'a [ImageId],
    ) -> BoxFuture<'a, Result<Vec<ImageRecord>, SourceError>> {
        Box::pin(async move {
            let all = self.all_images(project).await?;
            let by_id: std::collections::HashMap<&ImageId, &ImageRecord> =
                all.iter().map(|i| (&i.id, i)).collect();
            Ok(ids
                .iter()
                .filter_map(|id| by_id.get(id).map(|i| (*i).clone()))
                .collect())
        })
    }

    fn open_image<'a>(
        &'a self,
        project: &'a ProjectId,
        image: &'a ImageRecord,
    ) -> BoxFuture<'a, Result<ImageReader, SourceError>> {
        Box::pin(async move {
            // The store's own files: one missing is damage to retry on and report, unlike an
            // upload the web app lost (the database source's `ImageFileMissing`).
            let path = self.image_path(project, &image.id);
            let file = File::open(&path).await.map_err(io_err(&path))?;
            Ok(Box::new(file) as ImageReader)
        })
    }
}
