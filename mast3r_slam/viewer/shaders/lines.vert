// Coloured line segments (frustums, trajectory, graph edges, axes) in world coordinates.
in vec3 in_pos;
in vec3 in_color;

uniform mat4 m_view;

out vec3 g_pos;    // view space
out vec3 g_color;

void main() {
    g_pos = (m_view * vec4(in_pos, 1.0)).xyz;
    g_color = in_color;
    gl_Position = vec4(g_pos, 1.0);
}
