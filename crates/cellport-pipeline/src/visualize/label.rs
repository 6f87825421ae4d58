//! Cell numbers: where a label goes (the cell's area centroid) and how it is drawn (dark bold
//! digits of the bundled DejaVu Sans Bold on a white disc). `ab_glyph` lays the digits out and
//! gives each glyph's per-pixel coverage; tiny-skia rasterises the disc.

use std::collections::HashMap;
use std::sync::LazyLock;

use ab_glyph::{Font, FontRef, GlyphId, PxScale, ScaleFont, point};
use cellport_core::Point;

use super::draw::{Canvas, Stamp, disc_stamp};
use crate::geometry::CellPolygon;

/// Label disc and text colours: a white disc with near-black digits reads on any image and any
/// polygon colour.
const LABEL_DISC: [u8; 3] = [255, 255, 255];
const LABEL_TEXT: [u8; 3] = [20, 20, 20];

/// The bundled bold font, parsed once per process.
static LABEL_FONT: LazyLock<FontRef<'static>> = LazyLock::new(|| {
    FontRef::try_from_slice(include_bytes!("../../assets/DejaVuSans-Bold.ttf"))
        .expect("the bundled DejaVuSans-Bold.ttf parses")
});

/// Signed area and first moments (`∫x`, `∫y`) of a closed ring, relative to `origin`.
fn ring_moments(ring: &[Point], origin: Point) -> (f64, f64, f64) {
    let (mut area, mut moment_x, mut moment_y) = (0.0, 0.0, 0.0);
    for (idx, a) in ring.iter().enumerate() {
        let b = ring[(idx + 1) % ring.len()];
        let (ax, ay) = (a.x - origin.x, a.y - origin.y);
        let (bx, by) = (b.x - origin.x, b.y - origin.y);
        let cross = ax * by - bx * ay;
        area += cross / 2.0;
        moment_x += (ax + bx) * cross / 6.0;
        moment_y += (ay + by) * cross / 6.0;
    }
    // Normalise orientation so every ring contributes positively, whatever its winding.
    if area < 0.0 {
        (-area, -moment_x, -moment_y)
    } else {
        (area, moment_x, moment_y)
    }
}

/// The centroid of the cell's area with its holes subtracted. Falls back to the mean of the
/// external vertices when that area vanishes; `None` only for an empty or non-finite polygon.
pub(super) fn area_centroid(cell: &CellPolygon) -> Option<(f64, f64)> {
    // Working relative to the first vertex keeps the cross products small and precise.
    let origin = *cell.external.first()?;
    let (mut area, mut moment_x, mut moment_y) = ring_moments(&cell.external, origin);
    for hole in &cell.holes {
        let (hole_area, hole_x, hole_y) = ring_moments(hole, origin);
        area -= hole_area;
        moment_x -= hole_x;
        moment_y -= hole_y;
    }
    let centre = if area.abs() > 1e-9 {
        (origin.x + moment_x / area, origin.y + moment_y / area)
    } else {
        let n = cell.external.len() as f64;
        let sum = cell
            .external
            .iter()
            .fold((0.0, 0.0), |acc, p| (acc.0 + p.x, acc.1 + p.y));
        (sum.0 / n, sum.1 / n)
    };
    (centre.0.is_finite() && centre.1.is_finite()).then_some(centre)
}

/// The labels of one render. A glyph at a given sub-pixel offset, and a disc of a given radius
/// centred on a pixel corner, look the same wherever they are drawn, so each is rasterised once
/// and blended as a [`Stamp`] at every label that uses it.
pub(super) struct Labels {
    scale: PxScale,
    font_size: f64,
    glyphs: HashMap<(GlyphId, u32), Option<Stamp>>,
    /// By the radius's bits.
    discs: HashMap<u64, Option<Stamp>>,
}

impl Labels {
    /// `font_size` is the em size, as a browser's `32px` font.
    pub(super) fn new(font_size: f32) -> Labels {
        // ab_glyph scales by line height; this is the scale whose em is `font_size` px.
        let scale = LABEL_FONT
            .pt_to_px_scale(font_size * 0.75)
            .unwrap_or(PxScale::from(font_size));
        Labels {
            scale,
            font_size: f64::from(font_size),
            glyphs: HashMap::new(),
            discs: HashMap::new(),
        }
    }

    /// Draws `text` in dark bold digits on a white disc, the digits' ink box and the disc both
    /// within half a pixel of `centre` (both sit on the pixel grid).
    pub(super) fn draw(&mut self, canvas: &mut Canvas, text: &str, centre: (f64, f64)) {
        let font = &*LABEL_FONT;
        let scaled = font.as_scaled(self.scale);

        // Each glyph as (its whole-pixel caret, its key in the cache).
        let mut placed = Vec::with_capacity(text.len());
        let mut caret = 0.0f32;
        let mut previous = None;
        for ch in text.chars() {
            let id = scaled.glyph_id(ch);
            if let Some(previous) = previous {
                caret += scaled.kern(previous, id);
            }
            previous = Some(id);
            let whole = caret.floor();
            let key = (id, (caret - whole).to_bits());
            if !self.glyphs.contains_key(&key) {
                let stamp = glyph_stamp(font, id, self.scale, caret - whole);
                self.glyphs.insert(key, stamp);
            }
            placed.push((whole as i64, key));
            caret += scaled.h_advance(id);
        }
        let stamps = || {
            placed
                .iter()
                .filter_map(|(whole, key)| self.glyphs[key].as_ref().map(|stamp| (*whole, stamp)))
        };
        let Some((min_x, min_y, max_x, max_y)) = stamps()
            .map(|(whole, stamp)| {
                let height = (stamp.coverage.len() / stamp.width) as i64;
                let left = whole + stamp.left;
                (
                    left,
                    stamp.top,
                    left + stamp.width as i64,
                    stamp.top + height,
                )
            })
            .reduce(|a, b| (a.0.min(b.0), a.1.min(b.1), a.2.max(b.2), a.3.max(b.3)))
        else {
            return;
        };

        // Twice the ink box's centre: whole, as the box's corners are whole pixels.
        let (ink_x2, ink_y2) = (min_x + max_x, min_y + max_y);
        let shift_x = (centre.0 - ink_x2 as f64 / 2.0).round();
        let shift_y = (centre.1 - ink_y2 as f64 / 2.0).round();
        if !shift_x.is_finite() || !shift_y.is_finite() {
            return;
        }
        // `as` saturates: a label millions of pixels away is simply not on the image.
        let (shift_x, shift_y) = (shift_x as i64, shift_y as i64);
        // The disc reaches past the ink box's corners by 0.15 em. Its radius is rounded to half
        // a pixel and its centre to a whole one (at most half a pixel from the ink's), so the
        // labels of a render share a few discs, each rasterised once.
        let radius =
            0.5 * ((max_x - min_x) as f64).hypot((max_y - min_y) as f64) + 0.15 * self.font_size;
        let radius = (radius * 2.0).round() / 2.0;
        let disc = self
            .discs
            .entry(radius.to_bits())
            .or_insert_with(|| disc_stamp(radius));
        if let Some(disc) = disc {
            let anchor = (
                shift_x.saturating_add(ink_x2.div_euclid(2)),
                shift_y.saturating_add(ink_y2.div_euclid(2)),
            );
            canvas.blend_stamp(disc, anchor, LABEL_DISC);
        }
        for (whole, stamp) in stamps() {
            canvas.blend_stamp(stamp, (shift_x.saturating_add(whole), shift_y), LABEL_TEXT);
        }
    }
}

/// Glyph `id` at `scale`, its origin `offset` px right of a pixel boundary, as coverage; `None`
/// for a glyph without ink.
fn glyph_stamp(font: &FontRef<'_>, id: GlyphId, scale: PxScale, offset: f32) -> Option<Stamp> {
    let outlined = font.outline_glyph(id.with_scale_and_position(scale, point(offset, 0.0)))?;
    let bounds = outlined.px_bounds();
    let width = bounds.width() as usize;
    let height = bounds.height() as usize;
    if width == 0 || height == 0 {
        return None;
    }
    let mut coverage = vec![0u8; width * height];
    outlined.draw(|x, y, cover| {
        if let Some(slot) = coverage.get_mut(y as usize * width + x as usize) {
            *slot = (cover.clamp(0.0, 1.0) * 255.0).round() as u8;
        }
    });
    Some(Stamp {
        left: bounds.min.x as i64,
        top: bounds.min.y as i64,
        width,
        coverage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rect(x0: f64, y0: f64, x1: f64, y1: f64) -> Vec<Point> {
        [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
            .into_iter()
            .map(|(x, y)| Point { x, y })
            .collect()
    }

    #[test]
    fn centroid_subtracts_holes() {
        let check = |external: Vec<Point>, holes: Vec<Vec<Point>>, expected: (f64, f64)| {
            let cell = CellPolygon {
                polygon_id: 1,
                external,
                holes,
            };
            let (x, y) = area_centroid(&cell).unwrap();
            assert!(
                (x - expected.0).abs() < 1e-9 && (y - expected.1).abs() < 1e-9,
                "({x}, {y})"
            );
        };
        check(rect(0.0, 0.0, 10.0, 10.0), Vec::new(), (5.0, 5.0));
        // Area 100 at (5, 5) minus area 12 at (7, 5).
        check(
            rect(0.0, 0.0, 10.0, 10.0),
            vec![rect(6.0, 2.0, 8.0, 8.0)],
            ((500.0 - 84.0) / 88.0, 5.0),
        );
        // Clockwise rings give the same answer.
        let mut clockwise = rect(0.0, 0.0, 10.0, 10.0);
        clockwise.reverse();
        check(
            clockwise,
            vec![rect(6.0, 2.0, 8.0, 8.0)],
            ((500.0 - 84.0) / 88.0, 5.0),
        );
    }
}
