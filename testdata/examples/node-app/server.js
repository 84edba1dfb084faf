const http = require("http");
const port = process.env.PORT || 3000;
const server = http.createServer((req, res) => {
  res.writeHead(200, { "content-type": "text/plain" });
  res.end(req.url === "/health" ? "ok\n" : `hola from ${process.env.APP_VERSION || "dev"}\n`);
});
if (require.main === module) server.listen(port, () => console.log(`listening on ${port}`));
module.exports = server;
