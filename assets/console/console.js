// The console's only script: a copy button for a secret shown once, and a
// confirmation before a form that cannot be undone. Every page works for
// reading without it.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  for (const button of document.querySelectorAll("button[data-copy]")) {
    button.hidden = false;
    button.addEventListener("click", async () => {
      const source = document.getElementById(button.dataset.copy);
      const status = document.getElementById(button.dataset.status);
      try {
        await navigator.clipboard.writeText(source.value ?? source.textContent);
        if (status) status.textContent = "Copied to the clipboard.";
      } catch (e) {
        source.select?.();
        if (status) status.textContent = "Copying failed: select the secret and copy it yourself.";
      }
    });
  }
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
});
