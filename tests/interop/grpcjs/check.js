// A stock grpc-js client reads a batch of any size: GetBatch (both views), the first
// WatchBatch message, and every file through ListFiles pages. Nothing is configured:
// grpc-js's default receive limit (4 MiB a message) applies, so a reply that grew with
// the batch would fail here with RESOURCE_EXHAUSTED.
//
//   node check.js ADDRESS PROTO_ROOT BATCH_ID
//
// Prints one JSON object with what it read; exits 1 with the status on any failure.
"use strict";

const grpc = require("@grpc/grpc-js");
const loader = require("@grpc/proto-loader");

const [address, protoRoot, batchId] = process.argv.slice(2);
const definition = loader.loadSync("pdfbatch/v1/batch.proto", {
  includeDirs: [protoRoot],
  keepCase: true,
  longs: String,
  enums: String,
  oneofs: true,
  arrays: true,
  defaults: true,
});
const service = grpc.loadPackageDefinition(definition).pdfbatch.v1.BatchService;
const client = new service(address, grpc.credentials.createInsecure());

function unary(method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, (error, reply) => (error ? reject(error) : resolve(reply)));
  });
}

function firstEvent(request) {
  return new Promise((resolve, reject) => {
    const call = client.WatchBatch(request);
    let first = null;
    call.on("data", (event) => {
      if (first === null) {
        first = event;
        call.cancel();
      }
    });
    call.on("error", (error) => {
      if (first !== null && error.code === grpc.status.CANCELLED) resolve(first);
      else reject(error);
    });
    call.on("end", () => (first !== null ? resolve(first) : reject(new Error("no event"))));
  });
}

async function main() {
  const basic = await unary("GetBatch", { batch_id: batchId });
  const full = await unary("GetBatch", { batch_id: batchId, view: "BATCH_VIEW_FULL" });
  const first = await firstEvent({ batch_id: batchId });
  const ids = new Set();
  let token = "";
  let pages = 0;
  let total = -1;
  let largestPage = 0;
  do {
    const page = await unary("ListFiles", { batch_id: batchId, page_size: 1000, page_token: token });
    pages += 1;
    largestPage = Math.max(largestPage, page.files.length);
    for (const file of page.files) ids.add(file.file_id);
    token = page.next_page_token;
    total = page.total_size;
  } while (token);
  return {
    basic: { files: basic.files.length, file_count: basic.file_count, state: basic.state },
    full: { files: full.files.length, next_page_token: full.next_page_token !== "" },
    watch: { change: first.change, file_count: first.snapshot ? first.snapshot.file_count : -1 },
    list: { pages, files: ids.size, total, largest_page: largestPage },
  };
}

main().then(
  (summary) => {
    client.close();
    console.log(JSON.stringify(summary));
  },
  (error) => {
    client.close();
    console.error(`${error.code} ${grpc.status[error.code] || ""}: ${error.details || error.message}`);
    process.exit(1);
  },
);
