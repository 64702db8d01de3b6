// The effdsl extension: starts `effdsl lsp` (the language server of the effdsl Python package)
// for .eff files. Highlighting comes from syntaxes/eff.tmLanguage.json and needs no server.
"use strict";

const vscode = require("vscode");
const { LanguageClient } = require("vscode-languageclient/node");

let client;

function startClient() {
  const settings = vscode.workspace.getConfiguration("effdsl.server");
  const server = {
    command: settings.get("command", "effdsl"),
    args: settings.get("args", ["lsp"]),
  };
  client = new LanguageClient(
    "effdsl",
    "effdsl language server",
    { run: server, debug: server },
    { documentSelector: [{ language: "eff" }] },
  );
  return client.start();
}

function activate(context) {
  context.subscriptions.push(
    vscode.workspace.onDidChangeConfiguration(async (event) => {
      if (event.affectsConfiguration("effdsl.server")) {
        // a new command or arguments: start the server again with them
        await client.stop();
        await startClient();
      }
    }),
  );
  return startClient();
}

function deactivate() {
  return client ? client.stop() : undefined;
}

module.exports = { activate, deactivate };
