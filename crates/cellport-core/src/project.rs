//! Projects as the export sees them: images in project order, each with its polygons.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::ids::{ImageId, ProjectId, UserId};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Project {
    pub id: ProjectId,
    pub name: String,
    pub owner: UserId,
    /// Users the project is shared with: they may export it and see its exports.
    pub members: Vec<UserId>,
    /// Micrometres per pixel given at import, if any.
    pub scale: Option<f64>,
    pub image_count: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl Project {
    pub fn is_visible_to(&self, user: &UserId) -> bool {
        &self.owner == user || self.members.contains(user)
    }

    /// Who receives the events of this project's exports.
    pub fn audience(&self) -> Vec<UserId> {
        let mut users = vec![self.owner.clone()];
        users.extend(self.members.iter().filter(|m| **m != self.owner).cloned());
        users
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolygonKind {
    External,
    Internal,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub x: f64,
    pub y: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Polygon {
    #[serde(rename = "type")]
    pub kind: PolygonKind,
    pub points: Vec<Point>,
}

/// One image of a project and its annotations, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageRecord {
    pub id: ImageId,
    /// The name the image was imported under.
    pub name: String,
    /// Pixels; 0 when the source does not know (the export then reads the file's header).
    pub width: u32,
    pub height: u32,
    /// Size of the stored file in bytes.
    pub size_bytes: u64,
    pub polygons: Vec<Polygon>,
    /// What the source left out of this image and the export reports (a polyline that is not
    /// a polygon, a segmentation that could not be read).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Who is asking to see a project: the user, and the e-mail their token carries (shares made
/// by e-mail name the address, not the user).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Viewer {
    pub user: UserId,
    pub email: Option<String>,
}
