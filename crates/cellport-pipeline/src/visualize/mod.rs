//! Visualizations: the image with its polygons drawn over it (docs/reference.md, "Export options"
//! and "Archive layout").
//!
//! Three pure functions make a `visualizations/<stem>_viz.png` entry:
//! [`decode_for_display`] turns any stored image into 8-bit RGB, [`render_visualization`] draws
//! the polygons over it, and [`encode_png`] writes the result.
//!
//! Coordinates are continuous pixel coordinates: pixel `(i, j)` covers the square
//! `[i, i+1) × [j, j+1)` and its centre is `(i + 0.5, j + 0.5)`, as in COCO and a browser canvas.
//!
//! * `decode`: any supported format and bit depth to 8-bit RGB;
//! * `draw`: fills (even-odd, so holes stay open), strokes (round joins) and discs, rasterised
//!   anti-aliased by tiny-skia into coverage masks over each shape's bounding box, so the cost
//!   follows the polygons' size rather than the image's;
//! * `label`: the Polygon ID of each cell in a white disc at its area centroid.

mod decode;
mod draw;
mod label;

use cellport_core::Point;
use cellport_core::options::VisualizationOptions;
use image::RgbImage;
use image::codecs::png::{CompressionType, FilterType, PngEncoder};

use crate::geometry::PreparedImage;
pub use decode::{decode_for_display, decode_for_display_from};
use draw::Canvas;
use label::{Labels, area_centroid};

/// Draws `prepared`'s polygons over a copy of `base`.
///
/// Order: cell fills (external colour, holes left out), hole fills (internal colour, orphan
/// holes included), outlines (each in its polygon's colour), then, with `show_numbers`, each
/// cell's Polygon ID in a white disc at its area centroid (holes subtracted). Everything is
/// clipped to the image; polygons outside it or degenerate ones draw nothing and never panic.
pub fn render_visualization(
    base: &RgbImage,
    prepared: &PreparedImage,
    options: &VisualizationOptions,
) -> RgbImage {
    render_visualization_in_place(base.clone(), prepared, options)
}

/// [`render_visualization`] drawing straight onto `canvas`, for callers that no longer need the
/// undecorated image: one image-sized buffer fewer per render.
pub fn render_visualization_in_place(
    canvas: RgbImage,
    prepared: &PreparedImage,
    options: &VisualizationOptions,
) -> RgbImage {
    let external = options.polygon_colors.external.0;
    let internal = options.polygon_colors.internal.0;
    let alpha = options.transparency.clamp(0.0, 1.0) as f32;
    let mut canvas = Canvas::new(canvas);

    if alpha > 0.0 {
        let mut rings: Vec<&[Point]> = Vec::new();
        for cell in &prepared.cells {
            rings.clear();
            rings.push(&cell.external);
            rings.extend(cell.holes.iter().map(Vec::as_slice));
            canvas.fill_rings(&rings, external, alpha);
        }
        let all_holes = prepared
            .cells
            .iter()
            .flat_map(|cell| &cell.holes)
            .chain(&prepared.orphan_holes);
        for hole in all_holes {
            canvas.fill_rings(&[hole], internal, alpha);
        }
    }

    // A stroke width of 0 cannot come from parsed options; drawing 1 px keeps outlines visible.
    let stroke_width = options.stroke_width.max(1) as f32;
    for cell in &prepared.cells {
        canvas.stroke_ring(&cell.external, stroke_width, external);
        for hole in &cell.holes {
            canvas.stroke_ring(hole, stroke_width, internal);
        }
    }
    for hole in &prepared.orphan_holes {
        canvas.stroke_ring(hole, stroke_width, internal);
    }

    if options.show_numbers {
        let mut labels = Labels::new(options.font_size.max(1) as f32);
        for cell in &prepared.cells {
            if let Some(centre) = area_centroid(cell) {
                labels.draw(&mut canvas, &cell.polygon_id.to_string(), centre);
            }
        }
    }
    canvas.into_image()
}

/// Encodes `image` as PNG with fast compression: visualizations are written once per export
/// and archived as they are, so encoding speed matters more than a few percent of size.
///
/// Every row uses the Paeth filter. Choosing a filter per row (the adaptive heuristic) runs
/// all five filters on every row; on rendered visualizations Paeth alone encodes about 40%
/// faster, with files as small or within a few percent (`benches/breakdown.rs`).
///
/// # Panics
///
/// If `image` has a zero width or height, which PNG cannot represent and which no decoded
/// image has.
pub fn encode_png(image: &RgbImage) -> Vec<u8> {
    // Sized for the worst case (noise barely compresses), so the buffer never doubles mid-encode.
    let mut bytes = Vec::with_capacity(image.as_raw().len() + image.as_raw().len() / 64 + 1024);
    let encoder =
        PngEncoder::new_with_quality(&mut bytes, CompressionType::Fast, FilterType::Paeth);
    image
        .write_with_encoder(encoder)
        .expect("encoding a non-empty RGB image into memory cannot fail");
    bytes
}

#[cfg(test)]
mod tests {
    use cellport_core::options::{PolygonColors, Rgb};
    use image::ImageFormat;

    use super::*;
    use crate::geometry::CellPolygon;

    const GRAY: u8 = 128;
    const RED: Rgb = Rgb([255, 0, 0]);
    const BLUE: Rgb = Rgb([0, 0, 255]);

    fn gray_image(width: u32, height: u32) -> RgbImage {
        RgbImage::from_pixel(width, height, image::Rgb([GRAY; 3]))
    }

    fn rect(x0: f64, y0: f64, x1: f64, y1: f64) -> Vec<Point> {
        [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
            .into_iter()
            .map(|(x, y)| Point { x, y })
            .collect()
    }

    fn cell(polygon_id: u32, external: Vec<Point>, holes: Vec<Vec<Point>>) -> CellPolygon {
        CellPolygon {
            polygon_id,
            external,
            holes,
        }
    }

    fn prepared(cells: Vec<CellPolygon>, orphan_holes: Vec<Vec<Point>>) -> PreparedImage {
        PreparedImage {
            cells,
            orphan_holes,
            warnings: Vec::new(),
        }
    }

    fn options(show_numbers: bool, transparency: f64, stroke_width: u32) -> VisualizationOptions {
        VisualizationOptions {
            show_numbers,
            polygon_colors: PolygonColors {
                external: RED,
                internal: BLUE,
            },
            stroke_width,
            font_size: 20,
            transparency,
        }
    }

    /// The 64×64 test scene: one square cell 16..48, optionally with a centred hole 26..38.
    fn square_cell(with_hole: bool) -> PreparedImage {
        let holes = if with_hole {
            vec![rect(26.0, 26.0, 38.0, 38.0)]
        } else {
            Vec::new()
        };
        prepared(
            vec![cell(1, rect(16.0, 16.0, 48.0, 48.0), holes)],
            Vec::new(),
        )
    }

    fn blend(base: u8, colour: Rgb, alpha: f64) -> [u8; 3] {
        colour
            .0
            .map(|c| (f64::from(base) * (1.0 - alpha) + f64::from(c) * alpha).round() as u8)
    }

    #[track_caller]
    fn assert_pixel_near(image: &RgbImage, x: u32, y: u32, expected: [u8; 3]) {
        let actual = image.get_pixel(x, y).0;
        let close = actual
            .iter()
            .zip(&expected)
            .all(|(&a, &e)| a.abs_diff(e) <= 1);
        assert!(
            close,
            "pixel ({x}, {y}) is {actual:?}, expected {expected:?}"
        );
    }

    #[test]
    fn fill_blends_interior_toward_external_colour_and_leaves_outside_alone() {
        let out = render_visualization(
            &gray_image(64, 64),
            &square_cell(false),
            &options(false, 0.3, 2),
        );
        for (x, y) in [(32, 32), (20, 20), (44, 40)] {
            assert_pixel_near(&out, x, y, blend(GRAY, RED, 0.3));
        }
        for (x, y) in [(0, 0), (5, 60), (63, 63), (60, 32)] {
            assert_eq!(out.get_pixel(x, y).0, [GRAY; 3], "pixel ({x}, {y})");
        }
    }

    #[test]
    fn hole_shows_internal_colour_instead_of_external() {
        let out = render_visualization(
            &gray_image(64, 64),
            &square_cell(true),
            &options(false, 0.5, 1),
        );
        assert_pixel_near(&out, 32, 32, blend(GRAY, BLUE, 0.5));
        assert_pixel_near(&out, 20, 20, blend(GRAY, RED, 0.5));
    }

    #[test]
    fn orphan_hole_is_filled_with_internal_colour() {
        let scene = prepared(Vec::new(), vec![rect(10.0, 10.0, 30.0, 30.0)]);
        let out = render_visualization(&gray_image(64, 64), &scene, &options(false, 0.4, 1));
        assert_pixel_near(&out, 20, 20, blend(GRAY, BLUE, 0.4));
        assert_eq!(out.get_pixel(40, 40).0, [GRAY; 3]);
    }

    #[test]
    fn zero_transparency_leaves_interiors_unchanged() {
        let out = render_visualization(
            &gray_image(64, 64),
            &square_cell(true),
            &options(false, 0.0, 2),
        );
        for (x, y) in [(32, 32), (20, 20), (44, 40)] {
            assert_eq!(out.get_pixel(x, y).0, [GRAY; 3], "pixel ({x}, {y})");
        }
    }

    #[test]
    fn outlines_take_their_stroke_colour() {
        let out = render_visualization(
            &gray_image(64, 64),
            &square_cell(true),
            &options(false, 0.3, 2),
        );
        // The external edge x = 16 runs between pixel columns 15 and 16: both centres are 0.5 px
        // from it, inside a 2 px stroke.
        assert_eq!(out.get_pixel(15, 32).0, RED.0);
        assert_eq!(out.get_pixel(16, 32).0, RED.0);
        assert_eq!(out.get_pixel(32, 47).0, RED.0);
        assert_eq!(out.get_pixel(26, 32).0, BLUE.0);
        assert_eq!(out.get_pixel(32, 37).0, BLUE.0);
    }

    #[test]
    fn thick_strokes_have_the_requested_width_and_soft_edges() {
        let scene = square_cell(false);
        let thick = render_visualization(&gray_image(64, 64), &scene, &options(false, 0.0, 10));
        // 5 px either side of x = 16: column 11 (centre 4.5 px away) is fully covered, column 10
        // (5.5 px away) is not touched.
        assert_eq!(thick.get_pixel(11, 32).0, RED.0);
        assert_eq!(thick.get_pixel(20, 32).0, RED.0);
        assert_eq!(thick.get_pixel(10, 32).0, [GRAY; 3]);

        // A 1 px stroke on the edge between two pixel columns half-covers both.
        let thin = render_visualization(&gray_image(64, 64), &scene, &options(false, 0.0, 1));
        assert_pixel_near(&thin, 15, 32, blend(GRAY, RED, 0.5));
        assert_pixel_near(&thin, 16, 32, blend(GRAY, RED, 0.5));
    }

    #[test]
    fn numbers_sit_in_a_white_disc_at_the_centroid() {
        let base = gray_image(64, 64);
        let scene = square_cell(false);
        let plain = render_visualization(&base, &scene, &options(false, 0.3, 2));
        let numbered = render_visualization(&base, &scene, &options(true, 0.3, 2));

        let centre = numbered.get_pixel(32, 32).0;
        let white_ish = centre.iter().all(|&c| c > 200);
        let dark = centre.iter().all(|&c| c < 80);
        assert!(
            white_ish || dark,
            "centroid pixel {centre:?} is neither disc nor glyph"
        );

        let disc_region: Vec<(u32, u32)> = (26..38)
            .flat_map(|y| (26..38).map(move |x| (x, y)))
            .collect();
        let changed = disc_region
            .iter()
            .filter(|&&(x, y)| plain.get_pixel(x, y) != numbered.get_pixel(x, y))
            .count();
        assert!(
            changed > disc_region.len() / 2,
            "only {changed} disc pixels changed"
        );
        let dark_pixels = disc_region
            .iter()
            .filter(|&&(x, y)| numbered.get_pixel(x, y).0.iter().all(|&c| c < 80))
            .count();
        let white_pixels = disc_region
            .iter()
            .filter(|&&(x, y)| numbered.get_pixel(x, y).0.iter().all(|&c| c > 240))
            .count();
        assert!(
            dark_pixels > 0 && white_pixels > 0,
            "dark {dark_pixels}, white {white_pixels}"
        );

        // Away from the label both renderings agree.
        assert_eq!(plain.get_pixel(18, 18), numbered.get_pixel(18, 18));
        assert_eq!(plain.get_pixel(5, 5), numbered.get_pixel(5, 5));
    }

    #[test]
    fn polygons_outside_the_image_or_degenerate_draw_nothing() {
        let base = gray_image(64, 64);
        let point = |x, y| Point { x, y };
        let scene = prepared(
            vec![
                cell(
                    1,
                    rect(-100.0, -100.0, -50.0, -50.0),
                    vec![rect(-90.0, -90.0, -80.0, -80.0)],
                ),
                cell(2, rect(1e12, 1e12, 2e12, 2e12), Vec::new()),
                cell(3, Vec::new(), Vec::new()),
                cell(
                    4,
                    vec![
                        point(f64::NAN, 1.0),
                        point(2.0, 3.0),
                        point(4.0, f64::INFINITY),
                    ],
                    Vec::new(),
                ),
                cell(5, vec![point(200.0, 10.0); 3], Vec::new()),
            ],
            vec![rect(100.0, 100.0, 120.0, 120.0), Vec::new()],
        );
        let out = render_visualization(&base, &scene, &options(true, 0.5, 10));
        assert_eq!(out, base);
    }

    #[test]
    fn huge_and_tiny_inputs_do_not_panic() {
        let options = options(true, 0.5, 10);
        let covering = prepared(
            vec![
                cell(
                    7,
                    rect(-5.0, -5.0, 5.0, 5.0),
                    vec![rect(-1.0, -1.0, 1.0, 1.0)],
                ),
                cell(8, rect(-1e12, -1e12, 1e12, 1e12), Vec::new()),
            ],
            Vec::new(),
        );
        let out = render_visualization(&gray_image(1, 1), &covering, &options);
        assert_eq!(out.dimensions(), (1, 1));
        let out = render_visualization(&gray_image(64, 64), &covering, &options);
        assert_eq!(out.dimensions(), (64, 64));
        let empty = render_visualization(&RgbImage::new(0, 0), &covering, &options);
        assert_eq!(empty.dimensions(), (0, 0));
    }

    #[test]
    fn fill_opacity_follows_the_transparency_option() {
        let check = |transparency: f64| {
            let out = render_visualization(
                &gray_image(64, 64),
                &square_cell(false),
                &options(false, transparency, 1),
            );
            for (x, y) in [(32, 32), (18, 45), (46, 17)] {
                assert_pixel_near(&out, x, y, blend(GRAY, RED, transparency));
            }
        };
        check(0.05);
        check(0.3);
        check(0.5);
        check(0.77);
        check(1.0);
    }

    #[test]
    fn hole_inside_a_cell_is_not_covered_by_the_cell_fill() {
        // With the internal colour equal to the image, a hole shows only what was under it:
        // had the cell's fill covered it, its centre would be tinted red.
        let mut opts = options(false, 0.6, 1);
        opts.polygon_colors.internal = Rgb([GRAY; 3]);
        let out = render_visualization(&gray_image(64, 64), &square_cell(true), &opts);
        assert_eq!(out.get_pixel(32, 32).0, [GRAY; 3]);
        assert_eq!(out.get_pixel(30, 34).0, [GRAY; 3]);
        assert_pixel_near(&out, 20, 32, blend(GRAY, RED, 0.6));
    }

    #[test]
    fn stroke_colour_lies_on_a_slanted_outline() {
        // A diamond: its edges run at 45°, through pixel centres such as (24.5, 24.5).
        let point = |x, y| Point { x, y };
        let diamond = vec![
            point(32.5, 8.5),
            point(56.5, 32.5),
            point(32.5, 56.5),
            point(8.5, 32.5),
        ];
        let scene = prepared(vec![cell(1, diamond, Vec::new())], Vec::new());
        let out = render_visualization(&gray_image(64, 64), &scene, &options(false, 0.0, 4));
        for (x, y) in [(20, 20), (44, 20), (44, 44), (20, 44), (32, 8)] {
            assert_eq!(out.get_pixel(x, y).0, RED.0, "pixel ({x}, {y})");
        }
        // Inside and outside, away from the outline, nothing changes.
        for (x, y) in [(32, 32), (5, 5), (60, 60), (14, 14)] {
            assert_eq!(out.get_pixel(x, y).0, [GRAY; 3], "pixel ({x}, {y})");
        }
    }

    #[test]
    fn thick_strokes_have_round_corners() {
        let out = render_visualization(
            &gray_image(64, 64),
            &square_cell(false),
            &options(false, 0.0, 10),
        );
        // The corner (16, 16) with a half width of 5: the pixel centred 3.5 px away diagonally
        // is covered; the one 6.4 px away would be under a mitred corner, not a round one.
        assert_eq!(out.get_pixel(13, 13).0, RED.0);
        assert_eq!(out.get_pixel(11, 11).0, [GRAY; 3]);
    }

    #[test]
    fn far_away_vertices_draw_the_same_edges_as_near_ones() {
        // The half-plane below the diagonal y = x, once with vertices just outside the image
        // and once with vertices a billion pixels away.
        let point = |x, y| Point { x, y };
        let triangle = |far: f64| vec![point(-far, -far), point(far, far), point(-far, far)];
        let render = |far: f64| {
            let scene = prepared(vec![cell(1, triangle(far), Vec::new())], Vec::new());
            render_visualization(&gray_image(64, 64), &scene, &options(false, 0.5, 2))
        };
        let near = render(100.0);
        let far = render(1e9);
        for (x, y, pixel) in far.enumerate_pixels() {
            let expected = near.get_pixel(x, y).0;
            let close = pixel
                .0
                .iter()
                .zip(&expected)
                .all(|(a, e)| a.abs_diff(*e) <= 1);
            assert!(
                close,
                "pixel ({x}, {y}) is {:?}, expected {expected:?}",
                pixel.0
            );
        }
        assert_eq!(far.get_pixel(30, 30).0, RED.0);
        assert_pixel_near(&far, 10, 40, blend(GRAY, RED, 0.5));
        assert_eq!(far.get_pixel(40, 10).0, [GRAY; 3]);
        // The box that clipping adds around the window is not stroked.
        assert_pixel_near(&far, 0, 40, blend(GRAY, RED, 0.5));
        assert_pixel_near(&far, 20, 63, blend(GRAY, RED, 0.5));
    }

    #[test]
    fn encode_png_round_trips() {
        let image = render_visualization(
            &gray_image(64, 64),
            &square_cell(true),
            &options(true, 0.3, 3),
        );
        let png = encode_png(&image);
        assert_eq!(image::guess_format(&png).unwrap(), ImageFormat::Png);
        assert_eq!(decode_for_display(&png).unwrap(), image);
    }
}
