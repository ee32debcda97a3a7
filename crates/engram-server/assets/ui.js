// Engram dashboard: small progressive enhancements. Every page works without
// this file; the Content-Security-Policy allows no other script.
"use strict";

document.addEventListener("submit", (event) => {
  // Destructive buttons ask first (the server still requires the CSRF token).
  const button = event.submitter;
  const question = button && button.dataset.confirm;
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});

document.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-copy]");
  if (!button) return;
  const source = document.getElementById(button.dataset.copy);
  if (source && navigator.clipboard) {
    navigator.clipboard.writeText(source.textContent.trim()).then(
      () => { button.textContent = "Copied"; },
      () => { button.textContent = "Select and copy"; },
    );
  }
});
