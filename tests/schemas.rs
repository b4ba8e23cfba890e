//! The files in `schemas/` are exact: every type they list is read, a type
//! they do not list is refused, and the files the tool writes match them.

use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{Int32Builder, Int64Builder, StringBuilder};
use arrow_array::{
    ArrayRef, FixedSizeListArray, Float16Array, Float32Array, Float64Array, Int32Array,
    LargeListArray, LargeStringArray, ListArray, RecordBatch, StringViewArray, UInt32Array,
    UInt64Array,
};
use arrow_buffer::{OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field, Schema};
use half::f16;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;

use crate::util::*;

fn schema_file(name: &str) -> Value {
    let path = repo_root().join("schemas").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// The type names the schema files use.
fn type_name(t: &DataType) -> String {
    match t {
        DataType::FixedSizeList(f, _) => format!("fixed_size_list<{}>", type_name(f.data_type())),
        DataType::List(f) => format!("list<{}>", type_name(f.data_type())),
        DataType::LargeList(f) => format!("large_list<{}>", type_name(f.data_type())),
        DataType::Utf8 => "utf8".into(),
        DataType::LargeUtf8 => "large_utf8".into(),
        DataType::Utf8View => "utf8_view".into(),
        DataType::Float64 => "float64".into(),
        other => other.to_string().to_lowercase(),
    }
}

fn listed_types(schema: &Value, column: &str) -> Vec<String> {
    schema["columns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == column)
        .unwrap_or_else(|| panic!("no column {column}"))["types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect()
}

/// An embedding column of the named type holding `rows`.
fn embedding(type_name: &str, rows: &[Vec<f32>]) -> ArrayRef {
    let d = rows[0].len();
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    let (outer, item) = type_name.trim_end_matches('>').split_once('<').unwrap();
    let child: ArrayRef = match item {
        "float16" => Arc::new(Float16Array::from(
            flat.iter().map(|&x| f16::from_f32(x)).collect::<Vec<_>>(),
        )),
        "float32" => Arc::new(Float32Array::from(flat)),
        "float64" => Arc::new(Float64Array::from(
            flat.iter().map(|&x| x as f64).collect::<Vec<_>>(),
        )),
        "int32" => Arc::new(Int32Array::from(
            flat.iter().map(|&x| (x * 100.0) as i32).collect::<Vec<_>>(),
        )),
        other => panic!("item type {other}"),
    };
    let field = Arc::new(Field::new("item", child.data_type().clone(), true));
    let n = rows.len();
    match outer {
        "fixed_size_list" => Arc::new(FixedSizeListArray::new(field, d as i32, child, None)),
        "list" => Arc::new(ListArray::new(
            field,
            OffsetBuffer::new(ScalarBuffer::from(
                (0..=n).map(|i| (i * d) as i32).collect::<Vec<_>>(),
            )),
            child,
            None,
        )),
        "large_list" => Arc::new(LargeListArray::new(
            field,
            OffsetBuffer::new(ScalarBuffer::from(
                (0..=n).map(|i| (i * d) as i64).collect::<Vec<_>>(),
            )),
            child,
            None,
        )),
        other => panic!("list type {other}"),
    }
}

/// An id column of the named type: `0..n` as numbers or text.
fn ids(type_name: &str, n: usize) -> ArrayRef {
    let text: Vec<String> = (0..n).map(|i| format!("pair-{i}")).collect();
    match type_name {
        "utf8" => Arc::new(arrow_array::StringArray::from(text)),
        "large_utf8" => Arc::new(LargeStringArray::from(text)),
        "utf8_view" => Arc::new(StringViewArray::from(text)),
        "int32" => Arc::new(Int32Array::from((0..n as i32).collect::<Vec<_>>())),
        "int64" => Arc::new(arrow_array::Int64Array::from(
            (0..n as i64).collect::<Vec<_>>(),
        )),
        "uint32" => Arc::new(UInt32Array::from((0..n as u32).collect::<Vec<_>>())),
        "uint64" => Arc::new(UInt64Array::from((0..n as u64).collect::<Vec<_>>())),
        "float64" => Arc::new(Float64Array::from(
            (0..n).map(|i| i as f64).collect::<Vec<_>>(),
        )),
        other => panic!("id type {other}"),
    }
}

fn write_shard(path: &Path, id: ArrayRef, image: ArrayRef, text: ArrayRef) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", id.data_type().clone(), false),
        Field::new("image_embedding", image.data_type().clone(), true),
        Field::new("text_embedding", text.data_type().clone(), true),
    ]));
    write_batch(
        path,
        &RecordBatch::try_new(schema, vec![id, image, text]).unwrap(),
    );
}

fn select(data: &Path, prompts: &Path, out: &Path) -> std::process::Output {
    clipcov(&[
        "select",
        "--data",
        s(data),
        "--prompts",
        s(prompts),
        "--fraction",
        "0.2",
        "--out",
        s(out),
        "--quiet",
    ])
}

#[test]
fn every_input_type_listed_is_read_and_others_are_refused() {
    let dir = Dir::new("schema-input");
    let data = make_data(60, 8, 3, 41);
    let prompts = dir.join("prompts.parquet");
    write_prompts(&prompts, &data.prompts);
    let input = schema_file("input.json");
    let n = data.ids.len();
    let mut cases: Vec<(String, String, bool)> = Vec::new();
    for id in listed_types(&input, "id") {
        cases.push((id, "fixed_size_list<float32>".into(), true));
    }
    for emb in listed_types(&input, "image_embedding") {
        cases.push(("utf8".into(), emb, true));
    }
    assert_eq!(
        listed_types(&input, "image_embedding"),
        listed_types(&input, "text_embedding")
    );
    // Not listed: refused as bad data.
    cases.push(("float64".into(), "fixed_size_list<float32>".into(), false));
    cases.push(("utf8".into(), "fixed_size_list<int32>".into(), false));
    let mut picks: Option<Vec<u64>> = None;
    for (i, (id, emb, listed)) in cases.iter().enumerate() {
        let shard = dir.join(&format!("case{i}/data/shard.parquet"));
        write_shard(
            &shard,
            ids(id, n),
            embedding(emb, &data.u),
            embedding(emb, &data.v),
        );
        let out = dir.join(&format!("case{i}/out"));
        let o = select(shard.parent().unwrap(), &prompts, &out);
        let stderr = String::from_utf8_lossy(&o.stderr);
        if *listed {
            assert!(o.status.success(), "id {id}, embeddings {emb}: {stderr}");
            let rows: Vec<u64> = read_subset_csv(&out.join("clipcov/subset.csv"))
                .iter()
                .map(|r| r.row)
                .collect();
            // f16 rounding may reorder near-ties; wider types pick the same rows.
            if !emb.contains("float16") {
                assert_eq!(picks.get_or_insert(rows.clone()), &rows, "id {id}, {emb}");
            }
        } else {
            assert_eq!(
                o.status.code(),
                Some(65),
                "id {id}, embeddings {emb}: {stderr}"
            );
            assert!(stderr.contains("shard.parquet"), "{stderr}");
            assert!(!out.join("clipcov").exists());
        }
    }
}

#[test]
fn every_prompt_type_listed_is_read() {
    let dir = Dir::new("schema-prompts");
    let data = make_data(60, 8, 3, 43);
    let (data_dir, _) = write_data(&dir.path, &data, 1, false);
    let schema = schema_file("prompts.json");
    let n = data.prompts.len();
    let embs: Vec<Vec<f32>> = data.prompts.iter().map(|p| p.1.clone()).collect();
    let mut first: Option<String> = None;
    let class_types = listed_types(&schema, "class_id");
    let name_types = listed_types(&schema, "name");
    let emb_types = listed_types(&schema, "text_embedding");
    let cases = class_types
        .iter()
        .map(|c| (c.as_str(), "utf8", "fixed_size_list<float32>"))
        .chain(
            name_types
                .iter()
                .map(|t| ("int32", t.as_str(), "fixed_size_list<float32>")),
        )
        .chain(
            emb_types
                .iter()
                .filter(|e| !e.contains("float16"))
                .map(|e| ("int32", "utf8", e.as_str())),
        );
    for (i, (class_type, name_type, emb_type)) in cases.enumerate() {
        let class_id: ArrayRef = match class_type {
            "int32" => {
                let mut b = Int32Builder::new();
                data.prompts.iter().for_each(|p| b.append_value(p.0));
                Arc::new(b.finish())
            }
            "int64" => {
                let mut b = Int64Builder::new();
                data.prompts.iter().for_each(|p| b.append_value(p.0 as i64));
                Arc::new(b.finish())
            }
            other => panic!("{other}"),
        };
        let names: ArrayRef = match name_type {
            "utf8" => {
                let mut b = StringBuilder::new();
                data.prompts
                    .iter()
                    .for_each(|p| b.append_value(format!("class {}", p.0)));
                Arc::new(b.finish())
            }
            "large_utf8" => Arc::new(LargeStringArray::from(
                data.prompts
                    .iter()
                    .map(|p| format!("class {}", p.0))
                    .collect::<Vec<_>>(),
            )),
            other => panic!("{other}"),
        };
        let emb = embedding(emb_type, &embs);
        assert_eq!(emb.len(), n);
        let schema = Arc::new(Schema::new(vec![
            Field::new("class_id", class_id.data_type().clone(), false),
            Field::new("name", names.data_type().clone(), true),
            Field::new("text_embedding", emb.data_type().clone(), true),
        ]));
        let prompts = dir.join(&format!("prompts{i}.parquet"));
        write_batch(
            &prompts,
            &RecordBatch::try_new(schema, vec![class_id, names, emb]).unwrap(),
        );
        let out = dir.join(&format!("out{i}"));
        let o = select(&data_dir, &prompts, &out);
        assert!(
            o.status.success(),
            "{class_type}/{name_type}/{emb_type}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let csv = std::fs::read_to_string(out.join("clipcov/subset.csv")).unwrap();
        assert_eq!(first.get_or_insert(csv.clone()), &csv);
    }
}

/// `(name, type, nullable)` of every column of a Parquet file.
fn parquet_columns(path: &Path) -> Vec<(String, String, bool)> {
    let file = std::fs::File::open(path).unwrap();
    let b = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
    b.schema()
        .fields()
        .iter()
        .map(|f| (f.name().clone(), type_name(f.data_type()), f.is_nullable()))
        .collect()
}

#[test]
fn subset_files_of_every_method_match_the_subset_schema() {
    let dir = Dir::new("schema-subset");
    let (data, prompts) = synth_at(
        &dir.join("synth"),
        "--rows 3000 --classes 6 --dim 16 --seed 4",
    );
    let out = dir.join("out");
    clipcov_ok(&[
        "compare",
        "--data",
        s(&data),
        "--prompts",
        s(&prompts),
        "--fraction",
        "0.1",
        "--out",
        s(&out),
        "--keep-columns",
        "kind",
        "--quiet",
    ]);
    let schema = schema_file("subset.json");
    let lead = schema["leading_columns"].as_array().unwrap();
    let terms = schema["method_terms"].as_object().unwrap();
    let mut methods = 0;
    for (method, names) in terms {
        let file = out.join(method).join("subset.parquet");
        if !file.exists() {
            continue; // c_rho and datacomp_image_based need extra inputs
        }
        methods += 1;
        let cols = parquet_columns(&file);
        let mut want: Vec<(String, Vec<String>, bool)> = lead
            .iter()
            .map(|c| {
                let types = c["types"].as_array().unwrap();
                let types = types.iter().map(|t| t.as_str().unwrap().to_string());
                (
                    c["name"].as_str().unwrap().to_string(),
                    types.collect(),
                    c["nulls"].as_bool().unwrap(),
                )
            })
            .collect();
        for t in names.as_array().unwrap() {
            let t = t.as_str().unwrap().to_string();
            want.push((t, vec!["float64".into()], false));
        }
        assert_eq!(cols.len(), want.len() + 1, "{method}: {cols:?}");
        for ((name, ty, nullable), (w_name, w_types, w_nulls)) in cols.iter().zip(&want) {
            assert_eq!(name, w_name, "{method}");
            assert!(w_types.contains(ty), "{method}: {name} has type {ty}");
            // A non-null column may be declared nullable only where the schema allows nulls.
            assert!(!nullable || *w_nulls, "{method}: {name} is nullable");
        }
        // Then the kept metadata column, with its source type.
        assert_eq!(cols.last().unwrap().0, "kind", "{method}");
        assert_eq!(cols[0].1, "utf8", "{method}: synth ids are text");
    }
    assert_eq!(methods, 6, "compare ran its six default methods");
}

#[test]
fn manifests_match_the_manifest_schema() {
    let dir = Dir::new("schema-manifest");
    let (data, prompts) = synth_at(&dir.join("synth"), "--rows 2000 --classes 5 --dim 16");
    let sel = dir.join("sel");
    let base = dir.join("base");
    let args = ["--data", s(&data), "--fraction", "0.1", "--quiet"];
    let mut a = vec!["select", "--prompts", s(&prompts), "--out", s(&sel)];
    a.extend(args);
    clipcov_ok(&a);
    let mut b = vec!["baseline", "semdedup", "--out", s(&base)];
    b.extend(args);
    clipcov_ok(&b);
    let schema = repo_root().join("schemas/manifest.schema.json");
    let script = "import json, sys, jsonschema\n\
        schema = json.load(open(sys.argv[1]))\n\
        jsonschema.Draft202012Validator.check_schema(schema)\n\
        for f in sys.argv[2:]:\n    \
            jsonschema.validate(json.load(open(f)), schema, cls=jsonschema.Draft202012Validator)\n\
        # A manifest without its outputs must fail.\n\
        m = json.load(open(sys.argv[2])); del m['outputs']\n\
        try:\n    jsonschema.validate(m, schema, cls=jsonschema.Draft202012Validator)\n    sys.exit('a manifest without outputs passed')\n\
        except jsonschema.ValidationError:\n    pass\n\
        print('valid')\n";
    let o = std::process::Command::new("python3")
        .args(["-c", script, s(&schema)])
        .arg(sel.join("manifest.json"))
        .arg(base.join("manifest.json"))
        .output()
        .expect("python3 (with jsonschema: pip install jsonschema)");
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "valid",
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}
