//! Polygon geometry shared by every output: validity, hole assignment, Polygon IDs.
//!
//! An image's stored polygons become a [`PreparedImage`]: its valid external polygons in stored
//! order, numbered 1.., each with the holes it owns, the valid holes no external polygon
//! contains, and a warning for everything left out (docs/reference.md, "Cancellation, failure and
//! resume" and "Archive layout").
//!
//! The helpers below ([`signed_area`], [`perimeter`], [`convex_hull`], [`hull_diameter`],
//! [`hull_min_width`], [`hull_width_across`]) are what the metrics are built from. They accept
//! rings in either orientation, with or without a repeated closing vertex.

use cellport_core::polygon::edges;
pub use cellport_core::polygon::{
    InvalidPolygon, MIN_AREA, check_polygon, signed_area, valid_external_count,
};
use cellport_core::{ImageRecord, Point, PolygonKind};

/// How close (px) a point must be to an edge to count as lying on it in [`point_in_ring`].
/// Far below any meaningful annotation precision, yet above the rounding noise of pixel coordinates.
const BOUNDARY_TOLERANCE: f64 = 1e-9;

/// One valid external polygon and its holes.
#[derive(Debug, Clone, PartialEq)]
pub struct CellPolygon {
    /// 1-based, in the stored order of the image's valid external polygons.
    pub polygon_id: u32,
    pub external: Vec<Point>,
    /// Valid internal polygons assigned to this one (all their vertices inside it; the smallest such external wins).
    pub holes: Vec<Vec<Point>>,
}

/// An image's polygons, ready for every output format.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PreparedImage {
    pub cells: Vec<CellPolygon>,
    /// Valid holes that no external polygon contains: kept in the JSON with `parentId: null`, left out elsewhere.
    pub orphan_holes: Vec<Vec<Point>>,
    /// Human-readable reasons for what was left out, naming the image.
    pub warnings: Vec<String>,
}

/// Validates, numbers and assigns holes; see [`prepare_image_with_hole_parents`].
///
/// Warnings name the image by its stored name and a polygon by its 1-based position among the
/// image's stored polygons, e.g. `image a.tif: polygon 3 (external) left out: zero area`.
pub fn prepare_image(image: &ImageRecord) -> PreparedImage {
    prepare_image_with_hole_parents(image).0
}

/// Like [`prepare_image`], and also returns the owner of every valid hole in the image's
/// stored order: `Some(polygon_id)` or `None` for an orphan.
///
/// [`PreparedImage`] groups holes by owner, which loses their stored order; the JSON
/// segmentation file numbers holes in stored order and needs it back
/// (see [`crate::formats::json::segmentation_image`]).
///
/// Hole assignment: a hole belongs to the external polygons that contain all of its vertices,
/// where a vertex on an external's boundary counts as inside (so a hole sharing an edge with its
/// cell still belongs to it), and the inside of a self-intersecting ring follows the even-odd
/// rule. Among several such externals the one with the smallest absolute area wins; on a tie,
/// the earlier stored one.
pub fn prepare_image_with_hole_parents(image: &ImageRecord) -> (PreparedImage, Vec<Option<u32>>) {
    let mut prepared = PreparedImage::default();
    // Bounding boxes and areas are computed once: every hole is tested against every external.
    let mut external_shapes: Vec<(BoundingBox, f64)> = Vec::new();
    let mut holes: Vec<(usize, &[Point])> = Vec::new();

    for (idx, polygon) in image.polygons.iter().enumerate() {
        let position = idx + 1;
        let kind = match polygon.kind {
            PolygonKind::External => "external",
            PolygonKind::Internal => "internal",
        };
        if let Err(reason) = check_polygon(&polygon.points) {
            prepared.warnings.push(format!(
                "image {}: polygon {position} ({kind}) left out: {reason}",
                image.name
            ));
            continue;
        }
        match polygon.kind {
            PolygonKind::External => {
                let polygon_id = u32::try_from(prepared.cells.len() + 1).unwrap_or(u32::MAX);
                external_shapes.push((
                    BoundingBox::of(&polygon.points),
                    signed_area(&polygon.points).abs(),
                ));
                prepared.cells.push(CellPolygon {
                    polygon_id,
                    external: polygon.points.clone(),
                    holes: Vec::new(),
                });
            }
            PolygonKind::Internal => holes.push((position, &polygon.points)),
        }
    }

    let mut hole_parents = Vec::with_capacity(holes.len());
    for (position, hole) in holes {
        let hole_box = BoundingBox::of(hole);
        let mut owner: Option<(usize, f64)> = None;
        for (cell_idx, (cell_box, cell_area)) in external_shapes.iter().enumerate() {
            if owner.is_some_and(|(_, best)| *cell_area >= best) || !cell_box.contains(&hole_box) {
                continue;
            }
            let external = &prepared.cells[cell_idx].external;
            if hole.iter().all(|p| point_in_ring(*p, external)) {
                owner = Some((cell_idx, *cell_area));
            }
        }
        match owner {
            Some((cell_idx, _)) => {
                let cell = &mut prepared.cells[cell_idx];
                cell.holes.push(hole.to_vec());
                hole_parents.push(Some(cell.polygon_id));
            }
            None => {
                prepared.warnings.push(format!(
                    "image {}: polygon {position} (internal) lies inside no external polygon: \
                     kept only in the JSON segmentation file",
                    image.name
                ));
                prepared.orphan_holes.push(hole.to_vec());
                hole_parents.push(None);
            }
        }
    }
    (prepared, hole_parents)
}

/// Axis-aligned bounding box of a ring.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoundingBox {
    pub min_x: f64,
    pub min_y: f64,
    pub max_x: f64,
    pub max_y: f64,
}

impl BoundingBox {
    /// The box of `points`; an empty slice gives an inverted (empty) box.
    pub fn of(points: &[Point]) -> BoundingBox {
        let mut bbox = BoundingBox {
            min_x: f64::INFINITY,
            min_y: f64::INFINITY,
            max_x: f64::NEG_INFINITY,
            max_y: f64::NEG_INFINITY,
        };
        for p in points {
            bbox.min_x = bbox.min_x.min(p.x);
            bbox.min_y = bbox.min_y.min(p.y);
            bbox.max_x = bbox.max_x.max(p.x);
            bbox.max_y = bbox.max_y.max(p.y);
        }
        bbox
    }

    pub fn width(&self) -> f64 {
        self.max_x - self.min_x
    }

    pub fn height(&self) -> f64 {
        self.max_y - self.min_y
    }

    /// Whether `other` lies inside this box, edges included (within the boundary tolerance).
    pub fn contains(&self, other: &BoundingBox) -> bool {
        other.min_x >= self.min_x - BOUNDARY_TOLERANCE
            && other.min_y >= self.min_y - BOUNDARY_TOLERANCE
            && other.max_x <= self.max_x + BOUNDARY_TOLERANCE
            && other.max_y <= self.max_y + BOUNDARY_TOLERANCE
    }
}

/// Length of the closed ring.
pub fn perimeter(ring: &[Point]) -> f64 {
    if ring.len() < 2 {
        return 0.0;
    }
    edges(ring).map(|(a, b)| distance(a, b)).sum()
}

pub fn distance(a: Point, b: Point) -> f64 {
    (b.x - a.x).hypot(b.y - a.y)
}

/// Twice the signed area of triangle (o, a, b): positive when o→a→b turns counter-clockwise.
fn cross(o: Point, a: Point, b: Point) -> f64 {
    (a.x - o.x) * (b.y - o.y) - (a.y - o.y) * (b.x - o.x)
}

/// Whether `p` is inside `ring` or on its boundary. The inside of a self-intersecting ring
/// follows the even-odd rule.
pub fn point_in_ring(p: Point, ring: &[Point]) -> bool {
    let mut inside = false;
    for (a, b) in edges(ring) {
        if distance_to_segment(p, a, b) <= BOUNDARY_TOLERANCE {
            return true;
        }
        // Half-open in y, so a ray through a vertex counts it exactly once.
        if (a.y > p.y) != (b.y > p.y) {
            let x_cross = a.x + (p.y - a.y) * (b.x - a.x) / (b.y - a.y);
            if p.x < x_cross {
                inside = !inside;
            }
        }
    }
    inside
}

fn distance_to_segment(p: Point, a: Point, b: Point) -> f64 {
    let (dx, dy) = (b.x - a.x, b.y - a.y);
    let length_squared = dx * dx + dy * dy;
    if length_squared == 0.0 {
        return distance(p, a);
    }
    let t = (((p.x - a.x) * dx + (p.y - a.y) * dy) / length_squared).clamp(0.0, 1.0);
    distance(
        p,
        Point {
            x: a.x + t * dx,
            y: a.y + t * dy,
        },
    )
}

/// Convex hull by Andrew's monotone chain: counter-clockwise in a y-up frame (positive
/// [`signed_area`]), no repeated and no collinear vertices. Fewer than three distinct
/// non-collinear points give the distinct extreme points (0, 1 or 2 of them).
pub fn convex_hull(points: &[Point]) -> Vec<Point> {
    let mut sorted: Vec<Point> = points.to_vec();
    sorted.sort_by(|a, b| a.x.total_cmp(&b.x).then(a.y.total_cmp(&b.y)));
    sorted.dedup();
    if sorted.len() < 3 {
        return sorted;
    }
    let mut hull: Vec<Point> = Vec::with_capacity(sorted.len() + 1);
    // Lower chain left to right, then upper chain right to left; `<= 0` drops collinear points.
    for &p in &sorted {
        while hull.len() >= 2 && cross(hull[hull.len() - 2], hull[hull.len() - 1], p) <= 0.0 {
            hull.pop();
        }
        hull.push(p);
    }
    let upper_floor = hull.len() + 1;
    for &p in sorted.iter().rev().skip(1) {
        while hull.len() >= upper_floor
            && cross(hull[hull.len() - 2], hull[hull.len() - 1], p) <= 0.0
        {
            hull.pop();
        }
        hull.push(p);
    }
    // The upper chain ends on the first point again.
    hull.pop();
    hull
}

/// The farthest pair of vertices of a convex hull from [`convex_hull`], by rotating calipers:
/// `(distance, a, b)`. An empty hull gives zero and the origin twice.
pub fn hull_diameter(hull: &[Point]) -> (f64, Point, Point) {
    let origin = Point { x: 0.0, y: 0.0 };
    match hull {
        [] => return (0.0, origin, origin),
        [a] => return (0.0, *a, *a),
        [a, b] => return (distance(*a, *b), *a, *b),
        _ => {}
    }
    let n = hull.len();
    let mut best = (0.0, hull[0], hull[0]);
    let mut consider = |a: Point, b: Point| {
        let d = distance(a, b);
        if d > best.0 {
            best = (d, a, b);
        }
    };
    let mut j = 1;
    for i in 0..n {
        let next_i = (i + 1) % n;
        // Advance the opposite caliper while the triangle on edge i keeps growing; the area is
        // unimodal along a convex hull, so j only ever moves forwards (at most 2n steps overall).
        let mut steps = 0;
        while steps < n
            && cross(hull[i], hull[next_i], hull[(j + 1) % n])
                > cross(hull[i], hull[next_i], hull[j])
        {
            j = (j + 1) % n;
            steps += 1;
        }
        // Parallel edges make four antipodal pairs; checking j + 1 too covers the tie.
        let next_j = (j + 1) % n;
        for (a, b) in [
            (hull[i], hull[j]),
            (hull[next_i], hull[j]),
            (hull[i], hull[next_j]),
            (hull[next_i], hull[next_j]),
        ] {
            consider(a, b);
        }
    }
    best
}

/// The smallest caliper width of a convex hull from [`convex_hull`]: the minimum over hull
/// edges of the distance from the edge's line to the farthest vertex (rotating calipers; the
/// minimum-width strip always has one side flush with an edge). Zero for fewer than 3 vertices.
pub fn hull_min_width(hull: &[Point]) -> f64 {
    let n = hull.len();
    if n < 3 {
        return 0.0;
    }
    // Twice the area of (edge i, vertex k) is proportional to k's distance from the edge line.
    let height = |i: usize, k: usize| cross(hull[i], hull[(i + 1) % n], hull[k]);
    let mut j = (0..n)
        .max_by(|a, b| height(0, *a).total_cmp(&height(0, *b)))
        .unwrap_or(0);
    let mut best = f64::INFINITY;
    for i in 0..n {
        let mut steps = 0;
        while steps < n && height(i, (j + 1) % n) >= height(i, j) {
            j = (j + 1) % n;
            steps += 1;
        }
        let edge_length = distance(hull[i], hull[(i + 1) % n]);
        best = best.min(height(i, j) / edge_length);
    }
    best
}

/// The hull's extent perpendicular to the direction from `a` to `b`: the distance between two
/// calipers parallel to that direction. Zero when `a == b`.
pub fn hull_width_across(hull: &[Point], a: Point, b: Point) -> f64 {
    let length = distance(a, b);
    if length == 0.0 || hull.is_empty() {
        return 0.0;
    }
    let (nx, ny) = (-(b.y - a.y) / length, (b.x - a.x) / length);
    let projections = hull.iter().map(|p| (p.x - a.x) * nx + (p.y - a.y) * ny);
    let (low, high) = projections.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    high - low
}

#[cfg(test)]
pub(crate) mod tests {
    use cellport_core::{ImageId, Polygon};

    use super::*;

    pub(crate) fn pts(coords: &[(f64, f64)]) -> Vec<Point> {
        coords.iter().map(|&(x, y)| Point { x, y }).collect()
    }

    pub(crate) fn rect(x0: f64, y0: f64, x1: f64, y1: f64) -> Vec<Point> {
        pts(&[(x0, y0), (x1, y0), (x1, y1), (x0, y1)])
    }

    /// A tiny xorshift so the randomized checks are reproducible without a new crate.
    pub(crate) struct XorShift(pub u64);

    impl XorShift {
        pub(crate) fn next_u64(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        /// Uniform in [0, 1).
        pub(crate) fn unit(&mut self) -> f64 {
            (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// A simple (non-self-intersecting) star-shaped polygon: sorted angles, random radii.
    /// Every third one snaps to a coarse grid so duplicates and collinear vertices occur.
    pub(crate) fn random_polygon(rng: &mut XorShift, idx: usize) -> Vec<Point> {
        let n = 3 + (rng.next_u64() % 40) as usize;
        let mut angles: Vec<f64> = (0..n).map(|_| rng.unit() * std::f64::consts::TAU).collect();
        angles.sort_by(f64::total_cmp);
        let (cx, cy) = (50.0 + rng.unit() * 100.0, 50.0 + rng.unit() * 100.0);
        angles
            .iter()
            .map(|a| {
                let r = 5.0 + rng.unit() * 40.0;
                let p = Point {
                    x: cx + r * a.cos(),
                    y: cy + r * a.sin(),
                };
                if idx.is_multiple_of(3) {
                    Point {
                        x: (p.x / 4.0).round() * 4.0,
                        y: (p.y / 4.0).round() * 4.0,
                    }
                } else {
                    p
                }
            })
            .collect()
    }

    fn image(polygons: Vec<(PolygonKind, Vec<Point>)>) -> ImageRecord {
        ImageRecord {
            id: "img-1".parse::<ImageId>().unwrap(),
            name: "cells.tif".to_owned(),
            width: 100,
            height: 100,
            size_bytes: 0,
            polygons: polygons
                .into_iter()
                .map(|(kind, points)| Polygon { kind, points })
                .collect(),
            warnings: Vec::new(),
        }
    }

    use PolygonKind::{External as E, Internal as I};

    #[test]
    fn polygon_validity() {
        let check = |points: Vec<Point>, expected: Result<(), InvalidPolygon>| {
            assert_eq!(check_polygon(&points), expected, "{points:?}");
        };
        check(rect(0.0, 0.0, 1.0, 1.0), Ok(()));
        check(pts(&[(0.0, 0.0), (1.0, 0.0), (0.0, 1.0)]), Ok(()));
        check(Vec::new(), Err(InvalidPolygon::TooFewPoints));
        check(
            pts(&[(0.0, 0.0), (1.0, 0.0)]),
            Err(InvalidPolygon::TooFewPoints),
        );
        // Four stored points, two distinct.
        check(
            pts(&[(0.0, 0.0), (1.0, 0.0), (0.0, 0.0), (1.0, 0.0)]),
            Err(InvalidPolygon::TooFewPoints),
        );
        check(
            pts(&[(0.0, 0.0), (1.0, 1.0), (2.0, 2.0)]),
            Err(InvalidPolygon::ZeroArea),
        );
        // 1e-10 px² is below the 1e-9 threshold.
        check(
            pts(&[(0.0, 0.0), (1.0, 0.0), (0.0, 2e-10)]),
            Err(InvalidPolygon::ZeroArea),
        );
        check(pts(&[(0.0, 0.0), (1.0, 0.0), (0.0, 2e-9)]), Ok(()));
        check(
            pts(&[(0.0, 0.0), (f64::NAN, 0.0), (0.0, 1.0)]),
            Err(InvalidPolygon::NonFinite),
        );
        check(
            pts(&[(0.0, 0.0), (1.0, f64::INFINITY)]),
            Err(InvalidPolygon::NonFinite),
        );
        // A figure eight whose lobes cancel has zero signed area: invalid by the zero-area rule.
        check(
            pts(&[(0.0, 0.0), (1.0, 1.0), (1.0, 0.0), (0.0, 1.0)]),
            Err(InvalidPolygon::ZeroArea),
        );
    }

    #[test]
    fn area_and_perimeter() {
        let check = |ring: Vec<Point>, area: f64, length: f64| {
            assert!((signed_area(&ring) - area).abs() < 1e-9, "{ring:?}");
            assert!((perimeter(&ring) - length).abs() < 1e-9, "{ring:?}");
        };
        check(rect(0.0, 0.0, 1.0, 1.0), 1.0, 4.0);
        check(rect(0.0, 0.0, 3.0, 2.0), 6.0, 10.0);
        let mut reversed = rect(0.0, 0.0, 3.0, 2.0);
        reversed.reverse();
        check(reversed, -6.0, 10.0);
        // A repeated closing vertex changes nothing.
        check(
            pts(&[(0.0, 0.0), (3.0, 0.0), (3.0, 2.0), (0.0, 2.0), (0.0, 0.0)]),
            6.0,
            10.0,
        );
        // Far from the origin a 1 px² square still has exactly 1 px² of area.
        check(rect(1e7, 1e7, 1e7 + 1.0, 1e7 + 1.0), 1.0, 4.0);
        check(Vec::new(), 0.0, 0.0);
    }

    #[test]
    fn point_in_ring_counts_the_boundary_as_inside() {
        let square = rect(0.0, 0.0, 2.0, 2.0);
        let check = |x: f64, y: f64, expected: bool| {
            assert_eq!(
                point_in_ring(Point { x, y }, &square),
                expected,
                "({x}, {y})"
            );
        };
        check(1.0, 1.0, true);
        check(0.0, 0.0, true);
        check(2.0, 1.0, true);
        check(1.0, 2.0, true);
        check(2.0 + 1e-6, 1.0, false);
        check(-0.5, 1.0, false);
        check(1.0, 3.0, false);
        // The notch of an L-shape is outside.
        let l_shape = pts(&[
            (0.0, 0.0),
            (2.0, 0.0),
            (2.0, 1.0),
            (1.0, 1.0),
            (1.0, 2.0),
            (0.0, 2.0),
        ]);
        assert!(!point_in_ring(Point { x: 1.5, y: 1.5 }, &l_shape));
        assert!(point_in_ring(Point { x: 0.5, y: 1.5 }, &l_shape));
    }

    #[test]
    fn convex_hull_cases() {
        let check = |points: Vec<Point>, expected: Vec<Point>| {
            assert_eq!(convex_hull(&points), expected, "{points:?}");
        };
        check(Vec::new(), Vec::new());
        check(pts(&[(1.0, 1.0), (1.0, 1.0)]), pts(&[(1.0, 1.0)]));
        check(
            pts(&[(0.0, 0.0), (1.0, 1.0), (2.0, 2.0)]),
            pts(&[(0.0, 0.0), (2.0, 2.0)]),
        );
        // Collinear edge points and interior points go; the result is counter-clockwise.
        check(
            pts(&[
                (0.0, 2.0),
                (1.0, 0.0),
                (0.0, 0.0),
                (2.0, 0.0),
                (1.0, 1.0),
                (2.0, 2.0),
                (0.0, 0.0),
            ]),
            pts(&[(0.0, 0.0), (2.0, 0.0), (2.0, 2.0), (0.0, 2.0)]),
        );
        // The L-shape's notch vertex is not on the hull.
        check(
            pts(&[
                (0.0, 0.0),
                (2.0, 0.0),
                (2.0, 1.0),
                (1.0, 1.0),
                (1.0, 2.0),
                (0.0, 2.0),
            ]),
            pts(&[(0.0, 0.0), (2.0, 0.0), (2.0, 1.0), (1.0, 2.0), (0.0, 2.0)]),
        );
    }

    #[test]
    fn calipers_on_known_shapes() {
        let check = |ring: Vec<Point>, diameter: f64, min_width: f64, across: f64| {
            let hull = convex_hull(&ring);
            let (d, a, b) = hull_diameter(&hull);
            assert!((d - diameter).abs() < 1e-12, "diameter {d} of {ring:?}");
            let w = hull_min_width(&hull);
            assert!((w - min_width).abs() < 1e-12, "min width {w} of {ring:?}");
            let x = hull_width_across(&hull, a, b);
            assert!((x - across).abs() < 1e-12, "orthogonal {x} of {ring:?}");
        };
        let sqrt2 = std::f64::consts::SQRT_2;
        check(rect(0.0, 0.0, 1.0, 1.0), sqrt2, 1.0, sqrt2);
        check(
            rect(0.0, 0.0, 3.0, 2.0),
            13f64.sqrt(),
            2.0,
            12.0 / 13f64.sqrt(),
        );
        check(
            pts(&[(0.0, 0.0), (4.0, 0.0), (0.0, 3.0)]),
            5.0,
            12.0 / 5.0,
            12.0 / 5.0,
        );
        check(pts(&[(0.0, 0.0), (2.0, 0.0)]), 2.0, 0.0, 0.0);
        check(Vec::new(), 0.0, 0.0, 0.0);
    }

    #[test]
    fn random_polygons_agree_with_brute_force() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        for idx in 0..60 {
            let ring = random_polygon(&mut rng, idx);
            let hull = convex_hull(&ring);
            assert!(hull.len() >= 3, "{ring:?}");
            assert!(signed_area(&hull) > 0.0, "hull must be counter-clockwise");

            // Every point lies inside or on the hull: left of (or on) every edge.
            for p in &ring {
                for (a, b) in edges(&hull) {
                    let scale = distance(a, b);
                    assert!(cross(a, b, *p) / scale > -1e-9, "{p:?} outside hull");
                }
            }

            // Area against the trapezoid formula, an independent derivation of the same integral.
            let trapezoids: f64 = edges(&ring)
                .map(|(a, b)| (a.x - b.x) * (a.y + b.y) / 2.0)
                .sum();
            assert!((signed_area(&ring) - trapezoids).abs() < 1e-9 * trapezoids.abs().max(1.0));

            // Feret max against all vertex pairs of the polygon.
            let brute_max = ring
                .iter()
                .flat_map(|a| ring.iter().map(move |b| distance(*a, *b)))
                .fold(0.0, f64::max);
            let (d, a, b) = hull_diameter(&hull);
            assert!((d - brute_max).abs() < 1e-9, "diameter {d} vs {brute_max}");
            assert!((distance(a, b) - d).abs() < 1e-12);

            // Feret min against every hull edge direction, measured over all polygon vertices.
            let brute_min = edges(&hull)
                .map(|(a, b)| {
                    let len = distance(a, b);
                    ring.iter()
                        .map(|p| cross(a, b, *p).abs() / len)
                        .fold(0.0, f64::max)
                })
                .fold(f64::INFINITY, f64::min);
            let w = hull_min_width(&hull);
            assert!((w - brute_min).abs() < 1e-9, "min width {w} vs {brute_min}");

            // The orthogonal width is a caliper width, so it is never below the minimum.
            assert!(hull_width_across(&hull, a, b) >= w - 1e-9);
        }
    }

    #[test]
    fn valid_externals_are_numbered_in_stored_order_and_invalid_ones_warned() {
        let image = image(vec![
            (E, rect(0.0, 0.0, 10.0, 10.0)),
            (E, pts(&[(0.0, 0.0), (1.0, 1.0)])),
            (I, pts(&[(1.0, 1.0), (f64::NAN, 2.0), (2.0, 1.0)])),
            (E, rect(20.0, 20.0, 30.0, 30.0)),
            (E, pts(&[(0.0, 0.0), (5.0, 5.0), (9.0, 9.0)])),
        ]);
        let prepared = prepare_image(&image);
        let ids: Vec<(u32, Vec<Point>)> = prepared
            .cells
            .iter()
            .map(|c| (c.polygon_id, c.external.clone()))
            .collect();
        assert_eq!(
            ids,
            vec![
                (1, rect(0.0, 0.0, 10.0, 10.0)),
                (2, rect(20.0, 20.0, 30.0, 30.0))
            ]
        );
        assert_eq!(
            prepared.warnings,
            vec![
                "image cells.tif: polygon 2 (external) left out: fewer than 3 distinct points",
                "image cells.tif: polygon 3 (internal) left out: a non-finite coordinate",
                "image cells.tif: polygon 5 (external) left out: zero area",
            ]
        );
        assert!(prepared.orphan_holes.is_empty());
    }

    #[test]
    fn holes_go_to_the_smallest_external_containing_all_their_vertices() {
        let check = |polygons: Vec<(PolygonKind, Vec<Point>)>,
                     expected_holes: Vec<usize>,
                     expected_parents: Vec<Option<u32>>| {
            let (prepared, parents) = prepare_image_with_hole_parents(&image(polygons.clone()));
            let counts: Vec<usize> = prepared.cells.iter().map(|c| c.holes.len()).collect();
            assert_eq!(counts, expected_holes, "{polygons:?}");
            assert_eq!(parents, expected_parents, "{polygons:?}");
            let n_orphans = expected_parents.iter().filter(|p| p.is_none()).count();
            assert_eq!(prepared.orphan_holes.len(), n_orphans);
            assert_eq!(prepared.warnings.len(), n_orphans);
        };
        // A hole inside one cell.
        check(
            vec![
                (E, rect(0.0, 0.0, 10.0, 10.0)),
                (I, rect(2.0, 2.0, 4.0, 4.0)),
            ],
            vec![1],
            vec![Some(1)],
        );
        // Stored before its cell, it is still assigned.
        check(
            vec![
                (I, rect(2.0, 2.0, 4.0, 4.0)),
                (E, rect(0.0, 0.0, 10.0, 10.0)),
            ],
            vec![1],
            vec![Some(1)],
        );
        // Nested cells: the smaller one wins, whatever the stored order.
        check(
            vec![
                (E, rect(1.0, 1.0, 6.0, 6.0)),
                (E, rect(0.0, 0.0, 10.0, 10.0)),
                (I, rect(2.0, 2.0, 4.0, 4.0)),
                (I, rect(7.0, 7.0, 8.0, 8.0)),
            ],
            vec![1, 1],
            vec![Some(1), Some(2)],
        );
        // Vertices on the boundary count as inside: a hole sharing the cell's edge.
        check(
            vec![
                (E, rect(0.0, 0.0, 10.0, 10.0)),
                (I, rect(0.0, 0.0, 4.0, 4.0)),
            ],
            vec![1],
            vec![Some(1)],
        );
        // One vertex outside is enough to make an orphan; so is lying in no cell at all.
        check(
            vec![
                (E, rect(0.0, 0.0, 10.0, 10.0)),
                (I, rect(8.0, 8.0, 12.0, 9.0)),
                (I, rect(50.0, 50.0, 60.0, 60.0)),
            ],
            vec![0],
            vec![None, None],
        );
        // A hole in the notch of an L-shape has every vertex in its bounding box but not in it.
        check(
            vec![
                (
                    E,
                    pts(&[
                        (0.0, 0.0),
                        (20.0, 0.0),
                        (20.0, 10.0),
                        (10.0, 10.0),
                        (10.0, 20.0),
                        (0.0, 20.0),
                    ]),
                ),
                (I, rect(12.0, 12.0, 18.0, 18.0)),
                (I, rect(2.0, 12.0, 8.0, 18.0)),
            ],
            vec![1],
            vec![None, Some(1)],
        );
    }

    #[test]
    fn orphan_warning_names_image_and_position() {
        let prepared = prepare_image(&image(vec![
            (E, rect(0.0, 0.0, 1.0, 1.0)),
            (I, rect(5.0, 5.0, 6.0, 6.0)),
        ]));
        assert_eq!(
            prepared.warnings,
            vec![
                "image cells.tif: polygon 2 (internal) lies inside no external polygon: \
                 kept only in the JSON segmentation file"
            ]
        );
        assert_eq!(prepared.orphan_holes, vec![rect(5.0, 5.0, 6.0, 6.0)]);
    }
}
