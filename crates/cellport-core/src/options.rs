//! `ExportOptions`: what the web app's export dialog sends, parsed once at the edge.
//!
//! [`ExportOptions::parse`] turns untrusted JSON into options whose every range holds,
//! so the pipeline never checks them again. Errors name the offending field by its JSON path.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ids::ImageId;

/// The most images one export may select.
pub const MAX_SELECTED_IMAGES: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnnotationFormat {
    Coco,
    Yolo,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricsFormat {
    Excel,
    Csv,
    Json,
}

/// An sRGB colour, written `#RRGGBB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Rgb(pub [u8; 3]);

impl TryFrom<String> for Rgb {
    type Error = String;
    fn try_from(s: String) -> Result<Rgb, String> {
        let hex = s
            .strip_prefix('#')
            .filter(|h| h.len() == 6 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| format!("expected a colour like \"#FF0000\", got {s:?}"))?;
        let byte = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).expect("checked hex digits");
        Ok(Rgb([byte(0), byte(2), byte(4)]))
    }
}

impl From<Rgb> for String {
    fn from(c: Rgb) -> String {
        c.to_string()
    }
}

impl fmt::Display for Rgb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [r, g, b] = self.0;
        write!(f, "#{r:02X}{g:02X}{b:02X}")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolygonColors {
    pub external: Rgb,
    pub internal: Rgb,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VisualizationOptions {
    pub show_numbers: bool,
    pub polygon_colors: PolygonColors,
    /// 1–10 px.
    pub stroke_width: u32,
    /// 10–50 px.
    pub font_size: u32,
    /// Fill alpha, 0.0–1.0; 0 means no fill.
    pub transparency: f64,
}

impl Default for VisualizationOptions {
    fn default() -> VisualizationOptions {
        VisualizationOptions {
            show_numbers: true,
            polygon_colors: PolygonColors {
                external: Rgb([0xFF, 0, 0]),
                internal: Rgb([0, 0, 0xFF]),
            },
            stroke_width: 2,
            font_size: 32,
            transparency: 0.3,
        }
    }
}

/// Options of one export, every range already checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportOptions {
    pub include_original_images: bool,
    pub include_visualizations: bool,
    pub include_documentation: bool,
    pub annotation_formats: Vec<AnnotationFormat>,
    pub metrics_formats: Vec<MetricsFormat>,
    pub visualization_options: VisualizationOptions,
    /// `None` means every image of the project. Taken out when the job is created (the job's
    /// images are stored once beside it), so a stored or answered job carries only the count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selected_image_ids: Option<Vec<ImageId>>,
    /// How many images `selectedImageIds` named, once the ids are stored beside the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selected_image_count: Option<u64>,
    /// Micrometres per pixel; `None` reports in pixels.
    pub pixel_to_micrometer_scale: Option<f64>,
}

impl Default for ExportOptions {
    fn default() -> ExportOptions {
        ExportOptions {
            include_original_images: true,
            include_visualizations: true,
            include_documentation: true,
            annotation_formats: vec![AnnotationFormat::Coco, AnnotationFormat::Json],
            metrics_formats: vec![MetricsFormat::Excel],
            visualization_options: VisualizationOptions::default(),
            selected_image_ids: None,
            selected_image_count: None,
            pixel_to_micrometer_scale: None,
        }
    }
}

/// An option that is unknown, of the wrong type or out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidOptions {
    /// The JSON path of the field, e.g. `visualizationOptions.strokeWidth`.
    pub field: String,
    pub message: String,
}

fn invalid(field: &str, message: impl Into<String>) -> InvalidOptions {
    InvalidOptions {
        field: field.to_owned(),
        message: message.into(),
    }
}

fn want_bool(field: &str, v: &Value) -> Result<bool, InvalidOptions> {
    v.as_bool()
        .ok_or_else(|| invalid(field, format!("expected a boolean, got {}", type_name(v))))
}

fn want_int_in(field: &str, v: &Value, lo: u32, hi: u32) -> Result<u32, InvalidOptions> {
    let n = v
        .as_f64()
        .filter(|n| n.fract() == 0.0)
        .ok_or_else(|| invalid(field, format!("expected an integer, got {}", type_name(v))))?;
    if n < f64::from(lo) || n > f64::from(hi) {
        return Err(invalid(
            field,
            format!("must be between {lo} and {hi}, got {n}"),
        ));
    }
    Ok(n as u32)
}

fn want_number_in(field: &str, v: &Value, lo: f64, hi: f64) -> Result<f64, InvalidOptions> {
    let n = v
        .as_f64()
        .ok_or_else(|| invalid(field, format!("expected a number, got {}", type_name(v))))?;
    if !(lo..=hi).contains(&n) {
        return Err(invalid(
            field,
            format!("must be between {lo} and {hi}, got {n}"),
        ));
    }
    Ok(n)
}

fn want_object<'v>(field: &str, v: &'v Value) -> Result<&'v Map<String, Value>, InvalidOptions> {
    v.as_object()
        .ok_or_else(|| invalid(field, format!("expected an object, got {}", type_name(v))))
}

fn want_formats<T: for<'de> Deserialize<'de> + PartialEq>(
    field: &str,
    v: &Value,
    allowed: &str,
) -> Result<Vec<T>, InvalidOptions> {
    let items = v
        .as_array()
        .ok_or_else(|| invalid(field, format!("expected an array, got {}", type_name(v))))?;
    let mut formats = Vec::with_capacity(items.len());
    for item in items {
        let format = T::deserialize(item)
            .map_err(|_| invalid(field, format!("unknown format {item}; allowed: {allowed}")))?;
        if !formats.contains(&format) {
            formats.push(format);
        }
    }
    Ok(formats)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl ExportOptions {
    /// Parses the options object of an export request.
    ///
    /// Absent fields take their defaults; `null` is accepted where a field is optional.
    /// Unknown fields, wrong types, out-of-range values and unknown formats are rejected.
    /// Whether `selectedImageIds` belong to the project is checked by the caller, who knows the project.
    pub fn parse(raw: &Value) -> Result<ExportOptions, InvalidOptions> {
        let obj = want_object("options", raw)?;
        let mut opts = ExportOptions::default();
        for (key, v) in obj {
            match key.as_str() {
                "includeOriginalImages" => opts.include_original_images = want_bool(key, v)?,
                "includeVisualizations" => opts.include_visualizations = want_bool(key, v)?,
                "includeDocumentation" => opts.include_documentation = want_bool(key, v)?,
                "annotationFormats" => {
                    opts.annotation_formats = want_formats(key, v, "\"coco\", \"yolo\", \"json\"")?
                }
                "metricsFormats" => {
                    opts.metrics_formats = want_formats(key, v, "\"excel\", \"csv\", \"json\"")?
                }
                "visualizationOptions" => {
                    opts.visualization_options = parse_visualization(want_object(key, v)?)?
                }
                "selectedImageIds" if v.is_null() => opts.selected_image_ids = None,
                "selectedImageIds" => opts.selected_image_ids = Some(parse_image_ids(key, v)?),
                "pixelToMicrometerScale" if v.is_null() => opts.pixel_to_micrometer_scale = None,
                "pixelToMicrometerScale" => {
                    opts.pixel_to_micrometer_scale = Some(want_number_in(key, v, 0.001, 1000.0)?)
                }
                _ => return Err(invalid(key, "unknown field")),
            }
        }
        Ok(opts)
    }

    /// Parses the body of an export request (SPEC §4): `ExportOptions` itself, or
    /// `{"options": ExportOptions, "projectName"?: string}` as the web app sends it.
    ///
    /// A body with an `options` key is the wrapped shape, since `options` is no option.
    /// `projectName` must be a string and is otherwise ignored: the name comes from the source.
    /// Errors name fields inside the options alike in both shapes.
    pub fn parse_request(raw: &Value) -> Result<ExportOptions, InvalidOptions> {
        let obj = want_object("options", raw)?;
        let Some(options) = obj.get("options") else {
            return ExportOptions::parse(raw);
        };
        for (key, v) in obj {
            match key.as_str() {
                "options" => {}
                "projectName" if v.is_string() => {}
                "projectName" => {
                    return Err(invalid(
                        key,
                        format!("expected a string, got {}", type_name(v)),
                    ));
                }
                _ => return Err(invalid(key, "unknown field")),
            }
        }
        ExportOptions::parse(options)
    }

    /// Takes the selection out, leaving its count: what a stored job keeps of it.
    pub fn take_selection(&mut self) -> Option<Vec<ImageId>> {
        let ids = self.selected_image_ids.take()?;
        self.selected_image_count = Some(ids.len() as u64);
        Some(ids)
    }
}

fn parse_image_ids(field: &str, v: &Value) -> Result<Vec<ImageId>, InvalidOptions> {
    let items = v
        .as_array()
        .ok_or_else(|| invalid(field, format!("expected an array, got {}", type_name(v))))?;
    if items.len() > MAX_SELECTED_IMAGES {
        return Err(invalid(
            field,
            format!("at most {MAX_SELECTED_IMAGES} images, got {}", items.len()),
        ));
    }
    let mut ids = Vec::with_capacity(items.len());
    let mut seen = std::collections::HashSet::with_capacity(items.len());
    for item in items {
        let id = match item {
            Value::String(s) => s.parse::<ImageId>(),
            Value::Number(n) => n.to_string().parse::<ImageId>(),
            _ => {
                return Err(invalid(
                    field,
                    format!("expected image ids, got {}", type_name(item)),
                ));
            }
        }
        .map_err(|e| invalid(field, e.to_string()))?;
        if seen.insert(id.clone()) {
            ids.push(id);
        }
    }
    Ok(ids)
}

fn parse_visualization(obj: &Map<String, Value>) -> Result<VisualizationOptions, InvalidOptions> {
    let mut viz = VisualizationOptions::default();
    for (key, v) in obj {
        let path = format!("visualizationOptions.{key}");
        match key.as_str() {
            "showNumbers" => viz.show_numbers = want_bool(&path, v)?,
            "strokeWidth" => viz.stroke_width = want_int_in(&path, v, 1, 10)?,
            "fontSize" => viz.font_size = want_int_in(&path, v, 10, 50)?,
            "transparency" => viz.transparency = want_number_in(&path, v, 0.0, 1.0)?,
            "polygonColors" => {
                for (which, c) in want_object(&path, v)? {
                    let path = format!("{path}.{which}");
                    let colour = c
                        .as_str()
                        .ok_or_else(|| {
                            invalid(&path, format!("expected a string, got {}", type_name(c)))
                        })
                        .and_then(|s| Rgb::try_from(s.to_owned()).map_err(|m| invalid(&path, m)))?;
                    match which.as_str() {
                        "external" => viz.polygon_colors.external = colour,
                        "internal" => viz.polygon_colors.internal = colour,
                        _ => return Err(invalid(&path, "unknown field")),
                    }
                }
            }
            _ => return Err(invalid(&path, "unknown field")),
        }
    }
    Ok(viz)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn check_err(raw: Value, field: &str) {
        let err = ExportOptions::parse(&raw).unwrap_err();
        assert_eq!(err.field, field, "{raw} -> {err}");
    }

    #[test]
    fn empty_object_gives_the_dialog_defaults() {
        let opts = ExportOptions::parse(&json!({})).unwrap();
        assert_eq!(opts, ExportOptions::default());
        assert_eq!(
            opts.annotation_formats,
            [AnnotationFormat::Coco, AnnotationFormat::Json]
        );
        assert_eq!(opts.metrics_formats, [MetricsFormat::Excel]);
        assert_eq!(opts.visualization_options.stroke_width, 2);
    }

    #[test]
    fn every_field_parses() {
        let opts = ExportOptions::parse(&json!({
            "includeOriginalImages": false,
            "includeVisualizations": false,
            "includeDocumentation": false,
            "annotationFormats": ["yolo", "yolo"],
            "metricsFormats": ["csv", "json"],
            "visualizationOptions": {
                "showNumbers": false,
                "polygonColors": {"external": "#00ff00", "internal": "#123456"},
                "strokeWidth": 10, "fontSize": 10, "transparency": 0
            },
            "selectedImageIds": ["a", 7, "a"],
            "pixelToMicrometerScale": 0.5
        }))
        .unwrap();
        assert!(!opts.include_original_images);
        assert_eq!(opts.annotation_formats, [AnnotationFormat::Yolo]);
        assert_eq!(
            opts.metrics_formats,
            [MetricsFormat::Csv, MetricsFormat::Json]
        );
        assert_eq!(
            opts.visualization_options
                .polygon_colors
                .external
                .to_string(),
            "#00FF00"
        );
        assert_eq!(opts.visualization_options.transparency, 0.0);
        let ids: Vec<&str> = opts
            .selected_image_ids
            .iter()
            .flatten()
            .map(|i| i.as_str())
            .collect();
        assert_eq!(ids, ["a", "7"]);
        assert_eq!(opts.pixel_to_micrometer_scale, Some(0.5));
    }

    #[test]
    fn errors_name_the_field() {
        check_err(json!([]), "options");
        check_err(json!({"bogus": 1}), "bogus");
        check_err(
            json!({"includeVisualizations": "yes"}),
            "includeVisualizations",
        );
        check_err(
            json!({"annotationFormats": ["coco", "voc"]}),
            "annotationFormats",
        );
        check_err(json!({"annotationFormats": "coco"}), "annotationFormats");
        check_err(json!({"metricsFormats": ["pdf"]}), "metricsFormats");
        check_err(
            json!({"visualizationOptions": {"strokeWidth": 0}}),
            "visualizationOptions.strokeWidth",
        );
        check_err(
            json!({"visualizationOptions": {"strokeWidth": 2.5}}),
            "visualizationOptions.strokeWidth",
        );
        check_err(
            json!({"visualizationOptions": {"fontSize": 51}}),
            "visualizationOptions.fontSize",
        );
        check_err(
            json!({"visualizationOptions": {"transparency": 1.5}}),
            "visualizationOptions.transparency",
        );
        check_err(
            json!({"visualizationOptions": {"nope": 1}}),
            "visualizationOptions.nope",
        );
        check_err(
            json!({"visualizationOptions": {"polygonColors": {"external": "red"}}}),
            "visualizationOptions.polygonColors.external",
        );
        check_err(
            json!({"visualizationOptions": {"polygonColors": {"outline": "#000000"}}}),
            "visualizationOptions.polygonColors.outline",
        );
        check_err(
            json!({"pixelToMicrometerScale": 0}),
            "pixelToMicrometerScale",
        );
        check_err(
            json!({"pixelToMicrometerScale": 1001}),
            "pixelToMicrometerScale",
        );
        check_err(json!({"selectedImageIds": [true]}), "selectedImageIds");
        check_err(json!({"selectedImageIds": ["../x"]}), "selectedImageIds");
    }

    #[test]
    fn a_request_is_the_options_or_the_options_wrapped() {
        let custom = json!({"metricsFormats": ["csv"]});
        let expected = ExportOptions::parse(&custom).unwrap();
        for body in [
            custom.clone(),
            json!({"options": custom}),
            json!({"options": custom, "projectName": "Cells (copy)"}),
        ] {
            assert_eq!(
                ExportOptions::parse_request(&body).unwrap(),
                expected,
                "{body}"
            );
        }
        assert_eq!(
            ExportOptions::parse_request(&json!({})).unwrap(),
            ExportOptions::default()
        );
    }

    #[test]
    fn request_errors_name_the_field() {
        let check = |raw: Value, field: &str| {
            let err = ExportOptions::parse_request(&raw).unwrap_err();
            assert_eq!(err.field, field, "{raw} -> {err}");
        };
        check(json!(null), "options");
        check(json!({"options": []}), "options");
        check(json!({"options": {}, "projectName": 7}), "projectName");
        check(json!({"options": {}, "extra": true}), "extra");
        // Without `options` it is the unwrapped shape, which has no `projectName`.
        check(json!({"projectName": "Cells"}), "projectName");
        check(
            json!({"options": {"visualizationOptions": {"fontSize": 9}}}),
            "visualizationOptions.fontSize",
        );
    }

    #[test]
    fn options_round_trip_through_json() {
        let opts =
            ExportOptions::parse(&json!({"pixelToMicrometerScale": 2, "selectedImageIds": ["x"]}))
                .unwrap();
        let back = ExportOptions::parse(&serde_json::to_value(&opts).unwrap()).unwrap();
        assert_eq!(back, opts);
    }
}
