// Tests ../syntaxes/eff.tmLanguage.json with VS Code's own tokenizer (vscode-textmate on
// vscode-oniguruma): every token of every shipped spec (specs/*.eff) and of a few extra lines
// must carry the scope its class calls for. The expected class of each piece of a line is
// worked out here independently of the grammar, from the language reference's rules: the first
// word of a line is a statement, the second the block kind (unless it is a shorthand or a
// `key=`), `eN kN sN cN xN` are shorthands, `key=value` an attribute, `#` starts a comment.
//
// Run: npm ci --prefix editors/vscode/test && node editors/vscode/test/grammar.test.js
// Exit status 0 when every token has its scope and every class was seen; prints a summary.
"use strict";

const fs = require("fs");
const path = require("path");
const vsctm = require("vscode-textmate");
const oniguruma = require("vscode-oniguruma");

const ROOT = path.resolve(__dirname, "..", "..", "..");
const GRAMMAR = path.resolve(__dirname, "..", "syntaxes", "eff.tmLanguage.json");

const SCOPES = {
  comment: "comment.line.number-sign.eff",
  network: "keyword.other.network.eff",
  networkName: "entity.name.type.network.eff",
  statement: "keyword.other.statement.eff",
  presetName: "entity.name.section.preset.eff",
  kind: "support.type.block-kind.eff",
  shorthandLetter: "variable.parameter.shorthand.eff",
  number: "constant.numeric.eff",
  attribute: "variable.parameter.attribute.eff",
  equals: "keyword.operator.assignment.eff",
  wordValue: "constant.language.eff",
  string: "string.quoted.double.eff",
  open: "punctuation.section.block.begin.eff",
  close: "punctuation.section.block.end.eff",
};

// Lines the shipped specs lack (strings, string names, word values of every shape).
const EXTRA = [
  'network "efficientnet-b0" {  # a quoted name',
  '  stage mbconv e1.5 k3 s1 c24 x2 act=relu6 name="stage \\"one\\"" skip=no',
  "  stage fused_mbconv e4 k3 s2 c48 x4 se=none padding=same fix=width",
  '  preset "b 3" width=1.2 depth=1.4 resolution=300 dropout=0.3',
  "  defaults act=silu se=0.25 bn_eps=1e-3 drop_path=.2",
  "}",
];

const NUMBER = /^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$/;
const SHORTHAND = /^([a-z])([0-9]+(?:\.[0-9]+)?)$/;

// Where the comment of `line` starts: the first `#` outside a string, read left to right (a
// quote inside a comment opens no string), or -1.
function commentStart(line) {
  let inString = false;
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (inString) {
      if (c === "\\") i++;
      else if (c === '"') inString = false;
    } else if (c === '"') inString = true;
    else if (c === "#") return i;
  }
  return -1;
}

// [start, end, class] for every piece of `line`, from the language's rules.
function expected(line) {
  const out = [];
  let code = line;
  const comment = commentStart(line);
  if (comment >= 0) {
    out.push([comment, line.length, "comment"]);
    code = line.slice(0, comment);
  }
  const pieces = [...code.matchAll(/"(?:[^"\\]|\\.)*"|=|\{|\}|[^\s={}"]+/g)].map((m) => ({
    text: m[0],
    start: m.index,
    end: m.index + m[0].length,
  }));
  const put = (piece, cls) => out.push([piece.start, piece.end, cls]);
  const value = (piece) => {
    if (piece.text.startsWith('"')) put(piece, "string");
    else if (NUMBER.test(piece.text)) put(piece, "number");
    else put(piece, "wordValue");
  };
  if (!pieces.length) return out;
  const [first, second, third] = pieces;
  if (first.text === "network") {
    put(first, "network");
    if (second) put(second, second.text.startsWith('"') ? "string" : "networkName");
    if (third && third.text === "{") put(third, "open");
    return out;
  }
  if (first.text === "}") {
    put(first, "close");
    return out;
  }
  put(first, "statement");
  let i = 1;
  if (first.text === "preset" && second) {
    put(second, second.text.startsWith('"') ? "string" : "presetName");
    i = 2;
  } else if (second && !SHORTHAND.test(second.text) && !(third && third.text === "=")) {
    put(second, "kind");
    i = 2;
  }
  while (i < pieces.length) {
    const piece = pieces[i];
    const next = pieces[i + 1];
    if (next && next.text === "=") {
      put(piece, "attribute");
      put(next, "equals");
      if (pieces[i + 2]) value(pieces[i + 2]);
      i += 3;
      continue;
    }
    const short = SHORTHAND.exec(piece.text);
    if (short) {
      out.push([piece.start, piece.start + 1, "shorthandLetter"]);
      out.push([piece.start + 1, piece.end, "number"]);
    } else {
      value(piece);
    }
    i += 1;
  }
  return out;
}

async function loadGrammar() {
  const wasm = fs.readFileSync(require.resolve("vscode-oniguruma/release/onig.wasm")).buffer;
  await oniguruma.loadWASM(wasm);
  const registry = new vsctm.Registry({
    onigLib: Promise.resolve({
      createOnigScanner: (sources) => new oniguruma.OnigScanner(sources),
      createOnigString: (text) => new oniguruma.OnigString(text),
    }),
    loadGrammar: async (scopeName) =>
      scopeName === "source.eff"
        ? vsctm.parseRawGrammar(fs.readFileSync(GRAMMAR, "utf8"), GRAMMAR)
        : null,
  });
  return registry.loadGrammar("source.eff");
}

async function main() {
  const grammar = await loadGrammar();
  const specs = fs
    .readdirSync(path.join(ROOT, "specs"))
    .filter((name) => name.endsWith(".eff"))
    .sort();
  const sources = specs.map((name) => [
    `specs/${name}`,
    fs.readFileSync(path.join(ROOT, "specs", name), "utf8").split("\n"),
  ]);
  sources.push(["extra lines", EXTRA]);
  const seen = Object.fromEntries(Object.keys(SCOPES).map((cls) => [cls, 0]));
  const failures = [];
  for (const [name, lines] of sources) {
    let stack = vsctm.INITIAL;
    lines.forEach((line, index) => {
      const result = grammar.tokenizeLine(line, stack);
      stack = result.ruleStack;
      for (const [start, end, cls] of expected(line)) {
        // the piece must be whole tokens (no token straddles its edges), each with the scope
        const inside = result.tokens.filter((t) => t.startIndex < end && t.endIndex > start);
        const whole =
          inside.length > 0 &&
          inside[0].startIndex === start &&
          Math.min(inside[inside.length - 1].endIndex, line.length) === end;
        const scoped = inside.every((t) => t.scopes.includes(SCOPES[cls]));
        if (whole && scoped) {
          seen[cls] += 1;
        } else {
          const got = inside.map((t) => `${line.slice(t.startIndex, t.endIndex)}: ${t.scopes.slice(1).join(" ")}`);
          failures.push(
            `${name}:${index + 1}:${start + 1}: \`${line.slice(start, end)}\` should be ${cls} ` +
              `(${SCOPES[cls]}); got [${got.join("; ")}]`,
          );
        }
      }
    });
  }
  const missing = Object.keys(seen).filter((cls) => seen[cls] === 0);
  for (const failure of failures.slice(0, 20)) console.error(failure);
  if (missing.length) console.error(`token classes never seen: ${missing.join(", ")}`);
  const total = Object.values(seen).reduce((a, b) => a + b, 0);
  const counts = Object.entries(seen)
    .map(([cls, n]) => `${cls} ${n}`)
    .join(", ");
  console.log(
    `${total} tokens in ${sources.length} sources, ${failures.length} wrong: ${counts}`,
  );
  process.exit(failures.length || missing.length ? 1 : 0);
}

main().catch((error) => {
  console.error(error);
  process.exit(2);
});
