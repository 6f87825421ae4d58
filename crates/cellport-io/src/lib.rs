//! The two seams between Cellport and the outside world's data, on the floor above core:
//!
//! * [`source`]: where projects, images and polygons come from ([`ProjectSource`]): the built-in
//!   file store [`FileProjectStore`], or the web app's database ([`postgres`]); [`config`]
//!   picks one from `CELLPORT_PROJECT_SOURCE`.
//! * [`storage`]: where staged items and archives are written ([`Storage`]): a directory or an
//!   S3-compatible bucket ([`StorageConfig`], `CELLPORT_STORAGE_URL`); every byte written under
//!   it goes through this module.
//!
//! The api needs only these to answer, so it links neither image decoding nor archive writing.

pub mod config;
pub mod postgres;
pub mod source;
pub mod storage;

pub use config::SourceConfig;
pub use postgres::PostgresProjectSource;
pub use source::{
    FileProjectStore, ImageIdPage, ImagePage, ImageReader, ProjectSource, SourceError,
    each_image_id,
};
pub use storage::{ArchiveWriter, Staging, Storage, StorageConfig, Stored, StoredReader};
