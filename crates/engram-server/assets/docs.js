// The API reference: Swagger UI over this server's own /openapi.json.
"use strict";
window.addEventListener("DOMContentLoaded", () => {
  window.SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger",
    deepLinking: true,
    validatorUrl: null,
    tryItOutEnabled: false,
  });
});
