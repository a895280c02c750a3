// MathJax 3 for pymdownx.arithmatex (generic mode): typeset only the math arithmatex marked. The MathJax script itself is served from this site (docs/hooks.py).
window.MathJax = {
  tex: {inlineMath: [["\\(", "\\)"]], displayMath: [["\\[", "\\]"]], processEscapes: true, processEnvironments: true},
  options: {ignoreHtmlClass: ".*|", processHtmlClass: "arithmatex"},
  svg: {fontCache: "global"}
};
