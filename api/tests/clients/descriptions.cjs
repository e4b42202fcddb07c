// Checks the API descriptions against their specifications: docs/openapi.json with the OpenAPI
// 3.1 schema and its references resolved (swagger-parser), docs/asyncapi.json with the AsyncAPI
// 3 parser and its rules. Prints what is wrong and exits non-zero; prints "ok" otherwise.
//
//   node descriptions.cjs OPENAPI_FILE ASYNCAPI_FILE
const { readFileSync } = require("node:fs");
const SwaggerParser = require("@apidevtools/swagger-parser");
const { Parser } = require("@asyncapi/parser");

async function main([openapiFile, asyncapiFile]) {
  const problems = [];
  try {
    const api = await SwaggerParser.validate(openapiFile);
    if (api.openapi !== "3.1.0") problems.push(`${openapiFile}: OpenAPI ${api.openapi}, not 3.1.0`);
  } catch (error) {
    problems.push(`${openapiFile}: ${error.message}`);
  }
  const { document, diagnostics } = await new Parser().parse(readFileSync(asyncapiFile, "utf8"));
  // Severity 0 is an error, 1 a warning: both count, so that the document stays clean.
  for (const d of diagnostics.filter((d) => d.severity <= 1)) {
    problems.push(`${asyncapiFile}: ${d.code} at ${d.path.join(".")}: ${d.message}`);
  }
  if (!document) problems.push(`${asyncapiFile}: not an AsyncAPI document`);
  else if (document.version() !== "3.0.0") problems.push(`${asyncapiFile}: AsyncAPI ${document.version()}, not 3.0.0`);
  console.log(problems.length ? problems.join("\n") : "ok");
  process.exit(problems.length ? 1 : 0);
}

main(process.argv.slice(2)).catch((error) => {
  console.log(error.stack);
  process.exit(1);
});
