// Thick lines: each segment is clipped at the near plane and expanded to a screen-space quad.
layout(lines) in;
layout(triangle_strip, max_vertices = 4) out;

uniform mat4 m_proj;
uniform vec2 viewport;     // framebuffer size in pixels
uniform float line_width;  // pixels
uniform float near;

in vec3 g_pos[];
in vec3 g_color[];
out vec3 f_color;

void main() {
    vec3 p0 = g_pos[0];
    vec3 p1 = g_pos[1];
    float zn = -near * 1.001;
    if (p0.z > zn && p1.z > zn) return;  // both behind the near plane
    if (p0.z > zn) p0 = mix(p0, p1, (zn - p0.z) / (p1.z - p0.z));
    if (p1.z > zn) p1 = mix(p1, p0, (zn - p1.z) / (p0.z - p1.z));
    vec4 c0 = m_proj * vec4(p0, 1.0);
    vec4 c1 = m_proj * vec4(p1, 1.0);
    vec2 s0 = c0.xy / c0.w * viewport * 0.5;
    vec2 s1 = c1.xy / c1.w * viewport * 0.5;
    vec2 d = s1 - s0;
    d = length(d) > 1e-6 ? normalize(d) : vec2(1.0, 0.0);
    vec2 off = vec2(-d.y, d.x) * (0.5 * line_width) / (viewport * 0.5);
    f_color = g_color[0]; gl_Position = vec4(c0.xy + off * c0.w, c0.zw); EmitVertex();
    f_color = g_color[0]; gl_Position = vec4(c0.xy - off * c0.w, c0.zw); EmitVertex();
    f_color = g_color[1]; gl_Position = vec4(c1.xy + off * c1.w, c1.zw); EmitVertex();
    f_color = g_color[1]; gl_Position = vec4(c1.xy - off * c1.w, c1.zw); EmitVertex();
    EndPrimitive();
}
