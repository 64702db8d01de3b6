"""Editor support: what a language server and a highlighter need, over the library's public API.

- `vocabulary`: the statements, attributes and enumerated values of the language, read from the
  parser's and the AST's own tables (so new language features appear without edits here);
- `analysis`: diagnostics, hover, completion, formatting, outline and inlay hints of one
  document's text, as plain data (no protocol types);
- `server`: the `effdsl lsp` language server, a thin pygls adapter over `analysis`
  (needs the `lsp` extra);
- `lexer`: the Pygments lexer of `.eff` specs (registered as `eff` for `*.eff`).

Nothing here imports torch.
"""
