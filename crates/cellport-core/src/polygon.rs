//! Polygon validity: which stored polygons an export keeps, shared by the api (to count an
//! image's cells) and the pipeline (to number and measure them).

use crate::{ImageRecord, Point, PolygonKind};

/// Below this absolute shoelace area (px²) a polygon counts as having zero area (docs/reference.md,
/// "Cancellation, failure and resume").
pub const MIN_AREA: f64 = 1e-9;

/// Why a stored polygon is left out of the export (docs/reference.md, "Cancellation, failure
/// and resume").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidPolygon {
    NonFinite,
    TooFewPoints,
    ZeroArea,
}

impl std::fmt::Display for InvalidPolygon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            InvalidPolygon::NonFinite => "a non-finite coordinate",
            InvalidPolygon::TooFewPoints => "fewer than 3 distinct points",
            InvalidPolygon::ZeroArea => "zero area",
        })
    }
}

/// Checks one ring against the validity rules of docs/reference.md ("Cancellation, failure and
/// resume"). Non-finite coordinates are reported first because the other two tests are
/// meaningless on them.
pub fn check_polygon(points: &[Point]) -> Result<(), InvalidPolygon> {
    if points.iter().any(|p| !p.x.is_finite() || !p.y.is_finite()) {
        return Err(InvalidPolygon::NonFinite);
    }
    if !has_three_distinct_points(points) {
        return Err(InvalidPolygon::TooFewPoints);
    }
    if signed_area(points).abs() < MIN_AREA {
        return Err(InvalidPolygon::ZeroArea);
    }
    Ok(())
}

/// How many of the image's external polygons are valid: the cells an export will number.
pub fn valid_external_count(image: &ImageRecord) -> usize {
    image
        .polygons
        .iter()
        .filter(|p| p.kind == PolygonKind::External && check_polygon(&p.points).is_ok())
        .count()
}

/// A linear scan instead of sorting: only the first three distinct points matter.
fn has_three_distinct_points(points: &[Point]) -> bool {
    let Some(&first) = points.first() else {
        return false;
    };
    let Some(&second) = points.iter().find(|p| **p != first) else {
        return false;
    };
    points.iter().any(|p| *p != first && *p != second)
}

/// The ring's edges as (start, end) pairs, closing edge included.
pub fn edges(ring: &[Point]) -> impl Iterator<Item = (Point, Point)> + '_ {
    ring.iter()
        .zip(ring.iter().cycle().skip(1))
        .map(|(a, b)| (*a, *b))
}

/// Shoelace area, positive when the vertices turn counter-clockwise in a y-up frame
/// (clockwise on screen, where y grows downwards).
///
/// Coordinates are taken relative to the first vertex: with pixel coordinates in the tens of
/// thousands, the plain formula loses digits to cancellation on small polygons.
pub fn signed_area(ring: &[Point]) -> f64 {
    let Some(&origin) = ring.first() else {
        return 0.0;
    };
    let twice: f64 = edges(ring)
        .map(|(a, b)| (a.x - origin.x) * (b.y - origin.y) - (b.x - origin.x) * (a.y - origin.y))
        .sum();
    twice / 2.0
}
