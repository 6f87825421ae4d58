//! Project sources: where projects, images and polygons come from.
//!
//! [`ProjectSource`] is the seam; [`FileProjectStore`] is the built-in implementation that
//! `cellportctl project import` fills, laid out under `<data dir>/projects/<project id>/`:
//! `project.json` (the [`Project`]), `images.json` (the [`ImageRecord`]s in project order)
//! and `files/<image id>` (the original bytes).

use std::io;
use std::path::{Path, PathBuf};

use cellport_core::{ImageRecord, Project, ProjectId, UserId};
use futures::future::BoxFuture;
use tokio::fs::File;

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
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SourceError + '_ {
    move |source| SourceError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Where projects come from. Object-safe so services hold an `Arc<dyn ProjectSource>`.
pub trait ProjectSource: Send + Sync + 'static {
    /// The project, or `None` when it does not exist.
    fn project<'a>(
        &'a self,
        id: &'a ProjectId,
    ) -> BoxFuture<'a, Result<Option<Project>, SourceError>>;

    /// Projects the user owns or that are shared with them, oldest first.
    fn projects_visible_to<'a>(
        &'a self,
        user: &'a UserId,
    ) -> BoxFuture<'a, Result<Vec<Project>, SourceError>>;

    /// The project's images with their polygons, in project order.
    fn images<'a>(
        &'a self,
        id: &'a ProjectId,
    ) -> BoxFuture<'a, Result<Vec<ImageRecord>, SourceError>>;

    /// Opens an image's original bytes for streaming.
    fn open_image<'a>(
        &'a self,
        project: &'a ProjectId,
        image: &'a ImageRecord,
    ) -> BoxFuture<'a, Result<File, SourceError>>;
}

/// The built-in project store: plain files under the data directory.
#[derive(Debug, Clone)]
pub struct FileProjectStore {
    root: PathBuf,
}

impl FileProjectStore {
    pub fn new(data_dir: impl Into<PathBuf>) -> FileProjectStore {
        FileProjectStore {
            root: data_dir.into().join("projects"),
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

impl ProjectSource for FileProjectStore {
    fn project<'a>(
        &'a self,
        id: &'a ProjectId,
    ) -> BoxFuture<'a, Result<Option<Project>, SourceError>> {
        Box::pin(async move { Self::read_json(&self.project_dir(id).join("project.json")).await })
    }

    fn projects_visible_to<'a>(
        &'a self,
        user: &'a UserId,
    ) -> BoxFuture<'a, Result<Vec<Project>, SourceError>> {
        Box::pin(self.scan(move |p| p.is_visible_to(user)))
    }

    fn images<'a>(
        &'a self,
        id: &'a ProjectId,
    ) -> BoxFuture<'a, Result<Vec<ImageRecord>, SourceError>> {
        Box::pin(async move {
            Self::read_json(&self.project_dir(id).join("images.json"))
                .await?
                .ok_or_else(|| SourceError::ProjectNotFound(id.clone()))
        })
    }

    fn open_image<'a>(
        &'a self,
        project: &'a ProjectId,
        image: &'a ImageRecord,
    ) -> BoxFuture<'a, Result<File, SourceError>> {
        Box::pin(async move {
            let path = self.image_path(project, &image.id);
            File::open(&path).await.map_err(io_err(&path))
        })
    }
}
