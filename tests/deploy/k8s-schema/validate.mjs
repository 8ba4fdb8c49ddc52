// Validates Kubernetes objects offline against the API schema of a recent
// Kubernetes release, from two pinned npm packages (package-lock.json):
//  1. kubernetes-models: every built-in kind's JSON schema, generated from the
//     Kubernetes OpenAPI spec and compiled with ajv: types, required fields,
//     enums, formats (int32, int-or-string, quantities).
//  2. @kubernetes/client-node (generated from the release-1.36 OpenAPI spec):
//     its per-type attribute maps give every field a type may have, so unknown
//     fields are rejected, as the API server's strict field validation (the
//     kubectl default) does. The OpenAPI schemas alone allow unknown fields.
// Input (stdin): JSON array of {"source": "...", "object": {...}}.
// Output (stdout): JSON array of {"source", "kind", "errors": [...]}; exit 0.
import { readFileSync } from "node:fs";
import * as models from "./node_modules/@kubernetes/client-node/dist/gen/models/all.js";

function splitApiVersion(apiVersion) {
  const i = apiVersion.lastIndexOf("/");
  return i < 0 ? ["", apiVersion] : [apiVersion.slice(0, i), apiVersion.slice(i + 1)];
}

async function schemaErrors(obj) {
  const [group, version] = splitApiVersion(obj.apiVersion);
  const mod = group === "" ? `kubernetes-models/${version}` : `kubernetes-models/${group}/${version}`;
  let cls;
  try {
    cls = (await import(mod))[obj.kind];
  } catch (e) {
    cls = undefined;
  }
  if (typeof cls !== "function") return [`no schema for ${obj.apiVersion} ${obj.kind}`];
  try {
    new cls(structuredClone(obj)).validate();
    return [];
  } catch (e) {
    return String(e.message).split(", data").map((m, i) => (i ? "data" + m : m));
  }
}

const MAP = /^\{ \[key: string\]: (.+); \}$/;
const ARRAY = /^Array<(.+)>$/;

function unknownFields(value, type, path, out) {
  if (value === null || value === undefined) return;
  let m;
  if ((m = ARRAY.exec(type))) {
    if (Array.isArray(value)) value.forEach((v, i) => unknownFields(v, m[1], `${path}/${i}`, out));
    return;
  }
  if ((m = MAP.exec(type))) {
    if (typeof value === "object" && !Array.isArray(value))
      for (const [k, v] of Object.entries(value)) unknownFields(v, m[1], `${path}/${k}`, out);
    return;
  }
  const cls = models[type];
  if (!cls || !Array.isArray(cls.attributeTypeMap)) return;   // leaf: string, IntOrString, any, ...
  if (typeof value !== "object" || Array.isArray(value)) return; // type errors: schemaErrors
  const fields = new Map(cls.attributeTypeMap.map((a) => [a.baseName, a.type]));
  for (const [k, v] of Object.entries(value)) {
    if (!fields.has(k)) out.push(`${path}/${k}: unknown field (not in ${type})`);
    else unknownFields(v, fields.get(k), `${path}/${k}`, out);
  }
}

function strictErrors(obj) {
  const [, version] = splitApiVersion(obj.apiVersion);
  const type = version.charAt(0).toUpperCase() + version.slice(1) + obj.kind;
  if (!models[type]) return [`no field list for ${obj.apiVersion} ${obj.kind} (${type})`];
  const out = [];
  unknownFields(obj, type, "data", out);
  return out;
}

const input = JSON.parse(readFileSync(0, "utf8"));
const results = [];
for (const { source, object } of input) {
  let errors;
  if (!object || typeof object !== "object" || typeof object.apiVersion !== "string" || typeof object.kind !== "string") {
    errors = ["not a Kubernetes object: apiVersion and kind must be strings"];
  } else {
    errors = [...(await schemaErrors(object)), ...strictErrors(object)];
  }
  results.push({ source, kind: object && object.kind, errors });
}
process.stdout.write(JSON.stringify(results));
